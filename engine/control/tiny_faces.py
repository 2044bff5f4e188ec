"""A tiny antelopev2 pack (ONNX) that insightface's real `FaceAnalysis` routes and runs: an SCRFD-shaped
detector and an ArcFace-shaped recogniser, built with `onnx.helper`. No torch.

The detector is built so that tests know where it finds faces. In its 640 × 640 input (insightface letterboxes
the image into it), every cell of the 32-pixel grid is scored by its mean brightness: a cell whose mean value is
above 127.5 + 64 (e.g. all white) is a face. Its box starts at the cell's top-left corner and is (2 − b) · 32
pixels square, b = the cell's mean blue value mapped to [−1, 1] ((v − 127.5) / 128): a white cell gives a
32-pixel box, a cell with blue 128 a 64-pixel one (larger, but scored lower). Its keypoints sit at
`KEYPOINT_FRACTIONS` of the box. The recogniser's embedding is a fixed linear map of the aligned crop's mean
colour: 512 numbers, not of unit length.
"""

from pathlib import Path

import numpy as np

from engine.demo.files import written_atomically


ANTELOPE_FOLDER = Path("insightface") / "models" / "antelopev2"
DETECTOR_FILE, RECOGNISER_FILE = "scrfd_10g_bnkps.onnx", "glintr100.onnx"
STRIDES = (8, 16, 32)
FACE_STRIDE = 32
SCORE_GAIN = 20.0  # logit = 20 · (cell mean − 0.5) in the detector's input units
NO_FACE_LOGIT = -100.0
KEYPOINT_FRACTIONS = ((0.3, 0.35), (0.7, 0.35), (0.5, 0.55), (0.35, 0.75), (0.65, 0.75))
ARCFACE_SIZE = 112
ONNX_OPSET, ONNX_IR_VERSION = 13, 8


def write_tiny_antelopev2(
    models_dir: Path, seed: int = 0, folder: Path = ANTELOPE_FOLDER, file_names=(DETECTOR_FILE, RECOGNISER_FILE)
) -> list[Path]:
    """The detector and recogniser of an antelopev2 pack, shaped so insightface routes them to SCRFD and
    ArcFace (9 outputs; a square 112-pixel input). Other packs (buffalo_l) pass their folder and file names."""
    import onnx

    folder = Path(models_dir) / folder
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    detector_file, recogniser_file = file_names
    for name, model in ((detector_file, _tiny_detector()), (recogniser_file, _tiny_recogniser(seed))):
        onnx.checker.check_model(model)
        with written_atomically(folder / name) as partial:
            onnx.save(model, partial)
        written.append(folder / name)
    return written


def _tiny_detector():
    """SCRFD-shaped: per stride, score / box / keypoint heads as a Conv (kernel = stride), NHWC, flattened."""
    from onnx import TensorProto, helper

    nodes, weights, outputs = [], [], []
    for head, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride in STRIDES:
            kernel, bias = _detector_head(head, width, stride)
            name = f"{head}_{stride}"
            flat = f"{name}_flat" if head == "score" else name
            weights += [_tensor(kernel, f"{name}_w"), _tensor(bias, f"{name}_b"),
                        _tensor(np.array([-1, width], np.int64), f"{name}_shape")]
            nodes += [helper.make_node("Conv", ["input.1", f"{name}_w", f"{name}_b"], [f"{name}_conv"],
                                       kernel_shape=[stride, stride], strides=[stride, stride]),
                      helper.make_node("Transpose", [f"{name}_conv"], [f"{name}_nhwc"], perm=[0, 2, 3, 1]),
                      helper.make_node("Reshape", [f"{name}_nhwc", f"{name}_shape"], [flat])]
            if head == "score":
                nodes.append(helper.make_node("Sigmoid", [flat], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"anchors_{stride}", width]))
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])
    return _model(helper.make_graph(nodes, "tiny_scrfd", [image], outputs, weights))


def _detector_head(head: str, width: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Kernel (2 anchors × width, 3, stride, stride) and bias. Only anchor 0 of stride 32 ever fires."""
    kernel = np.zeros((2 * width, 3, stride, stride), np.float32)
    bias = np.zeros(2 * width, np.float32)
    mean = 1.0 / (stride * stride)  # a kernel of these over one channel averages it over the cell
    if head == "score":
        bias[:] = NO_FACE_LOGIT
        if stride == FACE_STRIDE:
            kernel[0] = SCORE_GAIN * mean / 3
            bias[0] = -SCORE_GAIN * 0.5
    elif head == "bbox":
        # left, top = 0; right, bottom = 2 − mean blue (channel 2 of the RGB blob), in stride units.
        kernel[2:4, 2] = -mean
        bias[2:4] = 2.0
    else:
        # keypoint k at fraction f of the box: f · (2 − mean blue) stride units from the top-left corner.
        fractions = np.asarray(KEYPOINT_FRACTIONS, np.float32).reshape(-1)
        kernel[:10, 2] = -fractions[:, None, None] * mean
        bias[:10] = 2.0 * fractions
    return kernel, bias


def _tiny_recogniser(seed: int):
    """ArcFace-shaped: (1, 3, 112, 112) → mean colour → a fixed 3 × 512 linear map."""
    from onnx import TensorProto, helper

    generator = np.random.default_rng(seed)
    projection = generator.standard_normal((3, 512)).astype(np.float32)
    offset = generator.standard_normal(512).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["colour"]),
             helper.make_node("MatMul", ["colour", "projection"], ["projected"]),
             helper.make_node("Add", ["projected", "offset"], ["fc1"])]
    image = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, ARCFACE_SIZE, ARCFACE_SIZE])
    embedding = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 512])
    graph = helper.make_graph(nodes, "tiny_arcface", [image], [embedding],
                              [_tensor(projection, "projection"), _tensor(offset, "offset")])
    return _model(graph)


def _tensor(array: np.ndarray, name: str):
    from onnx import numpy_helper

    return numpy_helper.from_array(array, name)


def _model(graph):
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION  # readable by any onnxruntime from 1.10 on
    return model
