"""Tiny ONNX stand-ins for DWPose's networks, in the real files' input and output shapes, built with `onnx.helper`:
a YOLOX-shaped detector (`yolox_l.onnx`: (1, 3, 640, 640) → (1, 8400, 85)) and RTMPose-shaped pose models
(`dw-ll_ucoco_384.onnx`: (1, 3, 384, 288) → SimCC x (1, 133, 576) and y (1, 133, 768); the AP-10K model:
(1, 3, 256, 256) → (1, 17, 512) twice).

The detector is built so that tests know what it finds. Only the 32-pixel grid fires: a cell is an object when
its mean red plus blue is above 127.5, a person when red outweighs blue, a cat (COCO class 15) when blue outweighs
red; every box is centred on its cell and 8 cells square. The pose models put every keypoint at a fixed place of
the crop (a standing person; a dog seen from the side), scored sigmoid(mean of the normalised crop + 4): about
0.9 on a dark crop, higher on a bright one, except every 10th keypoint, built to score 0.2 of that.
"""

import numpy as np

from engine.control.tiny_faces import _model, _tensor


STRIDES, CLASSES, FIRING_STRIDE, BOX_CELLS = (8, 16, 32), 80, 32, 8.0
PERSON, CAT = 0, 15
GAIN, OFF = 20.0, -100.0
LOW_SCORE_EVERY = 10  # every 10th keypoint peaks at 0.2: below DWPose's 0.3, so drawn as missing


WHOLEBODY_INPUT, ANIMAL_INPUT = (288, 384), (256, 256)  # (width, height)


def tiny_detector():
    """YOLOX-shaped: per stride a box conv and a score conv (kernel = stride), sigmoid scores, anchors flattened."""
    from onnx import TensorProto, helper

    nodes, weights, per_stride = [], [], []
    for stride in STRIDES:
        box_kernel, box_bias, score_kernel, score_bias = _detector_head(stride)
        name = f"s{stride}"
        weights += [_tensor(box_kernel, f"{name}_box_w"), _tensor(box_bias, f"{name}_box_b"),
                    _tensor(score_kernel, f"{name}_score_w"), _tensor(score_bias, f"{name}_score_b"),
                    _tensor(np.array([1, 5 + CLASSES, -1], np.int64), f"{name}_shape")]
        conv = {"kernel_shape": [stride, stride], "strides": [stride, stride]}
        nodes += [helper.make_node("Conv", ["images", f"{name}_box_w", f"{name}_box_b"], [f"{name}_box"], **conv),
                  helper.make_node("Conv", ["images", f"{name}_score_w", f"{name}_score_b"], [f"{name}_logit"],
                                   **conv),
                  helper.make_node("Sigmoid", [f"{name}_logit"], [f"{name}_score"]),
                  helper.make_node("Concat", [f"{name}_box", f"{name}_score"], [f"{name}_all"], axis=1),
                  helper.make_node("Reshape", [f"{name}_all", f"{name}_shape"], [f"{name}_flat"])]
        per_stride.append(f"{name}_flat")
    nodes += [helper.make_node("Concat", per_stride, ["anchors"], axis=2),
              helper.make_node("Transpose", ["anchors"], ["output"], perm=[0, 2, 1])]
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8400, 5 + CLASSES])
    return _model(helper.make_graph(nodes, "tiny_yolox", [image], [output], weights))


def _detector_head(stride: int) -> tuple[np.ndarray, ...]:
    mean = 1.0 / (255.0 * stride * stride)  # a kernel of these over one channel: the cell's mean in [0, 1]
    box_kernel = np.zeros((4, 3, stride, stride), np.float32)
    box_bias = np.array([0.5, 0.5, np.log(BOX_CELLS), np.log(BOX_CELLS)], np.float32)
    score_kernel = np.zeros((1 + CLASSES, 3, stride, stride), np.float32)
    score_bias = np.full(1 + CLASSES, OFF, np.float32)
    if stride == FIRING_STRIDE:
        score_kernel[0, [0, 2]] = GAIN * mean  # objectness: red + blue above 1/2
        score_bias[0] = -GAIN * 0.5
        score_kernel[1 + PERSON, 0], score_kernel[1 + PERSON, 2] = GAIN * mean, -GAIN * mean
        score_kernel[1 + CAT, 2], score_kernel[1 + CAT, 0] = GAIN * mean, -GAIN * mean
        score_bias[[1 + PERSON, 1 + CAT]] = 0.0
    return box_kernel, box_bias, score_kernel, score_bias


def tiny_pose_model(layout: np.ndarray, input_size: tuple[int, int]):
    """RTMPose-shaped: SimCC rows that peak at each keypoint's place (split ratio 2), scaled by
    sigmoid(mean of the normalised crop + 4)."""
    from onnx import TensorProto, helper

    width, height = input_size
    count = len(layout)
    peaks = np.where(np.arange(count) % LOW_SCORE_EVERY == LOW_SCORE_EVERY - 1, 0.2, 1.0).astype(np.float32)
    profiles = {}
    for axis, (name, bins) in enumerate((("simcc_x", width * 2), ("simcc_y", height * 2))):
        profile = np.zeros((count, bins), np.float32)
        profile[np.arange(count), np.clip(np.round(layout[:, axis] * bins), 0, bins - 1).astype(int)] = peaks
        profiles[name] = profile
    nodes = [helper.make_node("ReduceMean", ["input"], ["brightness"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Reshape", ["brightness", "scalar_shape"], ["brightness_flat"]),
             helper.make_node("Add", ["brightness_flat", "offset"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["visibility"]),
             *(helper.make_node("Mul", ["visibility", f"{name}_profile"], [name]) for name in profiles)]
    weights = [_tensor(np.array([1, 1, 1], np.int64), "scalar_shape"), _tensor(np.array(4.0, np.float32), "offset"),
               *(_tensor(profile, f"{name}_profile") for name, profile in profiles.items())]
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, height, width])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, count, profile.shape[1]])
               for name, profile in profiles.items()]
    return _model(helper.make_graph(nodes, "tiny_rtmpose", [image], outputs, weights))


def wholebody_layout() -> np.ndarray:
    """133 COCO-WholeBody keypoints (body 17, feet 6, face 68, left and right hand 21 each) as fractions of the
    crop: a person standing, facing the camera, arms out."""
    body = [(0.5, 0.15), (0.53, 0.13), (0.47, 0.13), (0.56, 0.14), (0.44, 0.14), (0.62, 0.27), (0.38, 0.27),
            (0.7, 0.42), (0.3, 0.42), (0.76, 0.55), (0.24, 0.55), (0.57, 0.55), (0.43, 0.55), (0.58, 0.72),
            (0.42, 0.72), (0.59, 0.88), (0.41, 0.88)]
    feet = [(0.62, 0.92), (0.64, 0.91), (0.58, 0.9), (0.38, 0.92), (0.36, 0.91), (0.42, 0.9)]
    turns = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    face = np.stack([0.5 + 0.05 * np.cos(turns), 0.16 + 0.06 * np.sin(turns)], axis=1)
    return np.concatenate([body, feet, face, _hand(0.76, 0.55, 1.0), _hand(0.24, 0.55, -1.0)]).astype(np.float32)


def _hand(x: float, y: float, side: float) -> np.ndarray:
    """A wrist and four joints on each of five fanned fingers."""
    points = [(x, y)]
    for finger in range(5):
        angle = np.radians(-40 + 20 * finger)
        for joint in range(1, 5):
            points.append((x + side * 0.02 * joint * np.cos(angle), y + 0.02 * joint * np.sin(angle)))
    return np.asarray(points)


def animal_layout() -> np.ndarray:
    """17 AP-10K keypoints (eyes, nose, neck, tail root, four legs) of a dog seen from its left side."""
    return np.asarray([(0.2, 0.25), (0.24, 0.25), (0.12, 0.32), (0.3, 0.35), (0.8, 0.4), (0.32, 0.45),
                       (0.32, 0.6), (0.32, 0.78), (0.38, 0.45), (0.38, 0.6), (0.38, 0.78), (0.75, 0.45),
                       (0.75, 0.6), (0.75, 0.78), (0.7, 0.45), (0.7, 0.6), (0.7, 0.78)], np.float32)
