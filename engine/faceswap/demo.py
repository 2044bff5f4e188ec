"""Tiny ReActor models that insightface's real classes load and run: a buffalo_l pack (the SCRFD-shaped
detector and ArcFace-shaped recogniser of `engine.control.tiny_faces`, plus a gender/age model) and an
inswapper_128-shaped swap model, built with `onnx.helper`. Random weights: the swapped faces are noise.

The gender/age model answers from the mean colour of its 96 × 96 crop: female when red outweighs green,
male otherwise; age 30. So tests choose a face's gender by its tint (the detector, see `tiny_faces`, needs a
bright cell: e.g. (255, 240, 240) is a female face, (240, 255, 240) a male one).

Face mask correction's parser, `GFPGAN/parsing_bisenet.pth`, is facexlib's BiSeNet at its only size (the class
fixes its widths: 13 M parameters, stored in fp16) with random weights, so its mask is arbitrary.
"""

from pathlib import Path

import numpy as np

from engine.control.tiny_faces import write_tiny_antelopev2
from engine.demo.files import written_atomically
from engine.faceswap.analysis import PACK_FOLDER


SWAP_MODEL_FILE = Path("insightface") / "inswapper_128.onnx"
BUFFALO_FILES = ("det_10g.onnx", "w600k_r50.onnx", "genderage.onnx")
SWAP_SIZE, EMBEDDING_SIZE, ATTRIBUTE_SIZE = 128, 512, 96
ONNX_OPSET, ONNX_IR_VERSION = 13, 8


MASK_PARSER_FILE = Path("GFPGAN") / "parsing_bisenet.pth"


def write_tiny_reactor_models(models_dir: Path, seed: int = 0) -> list[Path]:
    """buffalo_l's detector, recogniser and gender/age model, inswapper_128.onnx and the face mask parser, in
    ReActor's layout."""
    import onnx
    import torch
    from facexlib.parsing.bisenet import BiSeNet

    from engine.demo.files import torch_save_atomically

    models_dir = Path(models_dir)
    written = write_tiny_antelopev2(models_dir, seed, folder=PACK_FOLDER, file_names=BUFFALO_FILES[:2])
    for path, model in ((models_dir / PACK_FOLDER / BUFFALO_FILES[2], _tiny_genderage()),
                        (models_dir / SWAP_MODEL_FILE, _tiny_swapper(seed))):
        onnx.checker.check_model(model)
        with written_atomically(path) as partial:
            onnx.save(model, partial)
        written.append(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parser = BiSeNet(num_class=19).half()
    written.append(torch_save_atomically(parser.state_dict(), models_dir / MASK_PARSER_FILE))
    return written


def _tiny_swapper(seed: int):
    """inswapper_128's interface: `target` (1, 3, 128, 128) in [0, 1] and `source` (1, 512) in, a (1, 3, 128,
    128) face in [0, 1] out, and `emap` (512 × 512, the map insightface's `INSwapper` applies to the source
    embedding) as the graph's last initializer, where `INSwapper` reads it. The face is sigmoid(a random 1 × 1
    convolution of the target + a random projection of the source), so it depends on both."""
    from onnx import TensorProto, helper, numpy_helper

    generator = np.random.default_rng(seed + 1)
    weights = [
        numpy_helper.from_array(generator.standard_normal((3, 3, 1, 1)).astype(np.float32), "mix"),
        numpy_helper.from_array(generator.standard_normal((EMBEDDING_SIZE, 3)).astype(np.float32) * 4, "project"),
        numpy_helper.from_array(np.array([1, 3, 1, 1], np.int64), "as_bias"),
        numpy_helper.from_array(_random_rotation(generator, EMBEDDING_SIZE), "emap"),
    ]
    nodes = [
        helper.make_node("Conv", ["target", "mix"], ["mixed"], kernel_shape=[1, 1]),
        helper.make_node("MatMul", ["source", "project"], ["projected"]),
        helper.make_node("Reshape", ["projected", "as_bias"], ["bias"]),
        helper.make_node("Add", ["mixed", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    target = helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, SWAP_SIZE, SWAP_SIZE])
    source = helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, EMBEDDING_SIZE])
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, SWAP_SIZE, SWAP_SIZE])
    return _model(helper.make_graph(nodes, "tiny_inswapper", [target, source], [output], weights))


def _tiny_genderage():
    """genderage.onnx's interface: `data` (1, 3, 96, 96) RGB in [-1, 1] → (1, 3): female score, male score,
    age / 100. Scores: mean red − mean green and its opposite."""
    from onnx import TensorProto, helper, numpy_helper

    projection = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    offset = np.array([0.0, 0.0, 0.3], np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["colour"]),
             helper.make_node("MatMul", ["colour", "projection"], ["scores"]),
             helper.make_node("Add", ["scores", "offset"], ["fc1"])]
    image = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, ATTRIBUTE_SIZE, ATTRIBUTE_SIZE])
    scores = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 3])
    weights = [numpy_helper.from_array(projection, "projection"), numpy_helper.from_array(offset, "offset")]
    return _model(helper.make_graph(nodes, "tiny_genderage", [image], [scores], weights))


def _random_rotation(generator: np.random.Generator, size: int) -> np.ndarray:
    """An orthogonal matrix: like the real emap it keeps distinct identities distinct."""
    q, _ = np.linalg.qr(generator.standard_normal((size, size)))
    return q.astype(np.float32)


def _model(graph):
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION  # readable by any onnxruntime from 1.10 on
    return model
