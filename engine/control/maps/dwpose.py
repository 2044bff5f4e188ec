"""DWPose and the AP-10K animal pose, as sd-webui-controlnet v1.1.455 runs them (`annotator/openpose/wholebody.py`,
`animalpose.py`, `cv_ox_det.py`, `cv_ox_pose.py`; those follow IDEA-Research/DWPose's ONNX annotator and
OpenMMLab's RTMPose, Apache-2.0), with onnxruntime running the two ONNX networks. No torch.

1. YOLOX (`yolox_l.onnx`, 80 COCO classes) on the image letterboxed into 640 × 640 (padding 114, raw 0–255
   values): boxes decoded on the 8/16/32 grids, class-wise NMS (IoU 0.45, score > 0.1), then boxes of the wanted
   classes scoring > 0.3. No detection at all: no pose. Detections, none wanted: the pose model sees the whole
   image (sd-webui-controlnet's behaviour, kept).
2. RTMPose (`dw-ll_ucoco_384.onnx`, 133 COCO-WholeBody keypoints at 288 × 384; the AP-10K model, 17 keypoints at
   256 × 256) on each box grown 1.25× to the input's aspect ratio, ImageNet-normalised 0–255 values; SimCC
   decoding (argmax, score = the smaller of the two axis maxima, split ratio 2).

The image is passed as sd-webui-controlnet passes it: its RGB array, not BGR.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


DETECTOR_SIZE = (640, 640)  # (height, width)
LETTERBOX_FILL = 114
STRIDES = (8, 16, 32)
NMS_IOU, NMS_SCORE, BOX_SCORE = 0.45, 0.1, 0.3
PERSON_CLASSES = (0,)
ANIMAL_CLASSES = tuple(range(14, 24))  # COCO bird … giraffe
WHOLEBODY_INPUT, ANIMAL_INPUT = (288, 384), (256, 256)  # (width, height)
BOX_PADDING = 1.25
PIXEL_MEAN, PIXEL_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
SIMCC_SPLIT = 2.0


def onnx_session(path: Path, device: str = "cpu"):
    """An onnxruntime session, on CUDA when asked for and available (sd-webui-controlnet always uses the CPU)."""
    import onnxruntime

    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return onnxruntime.InferenceSession(str(path), providers=providers)


def _run(session, tensor: np.ndarray) -> list[np.ndarray]:
    return session.run(None, {session.get_inputs()[0].name: tensor})


def detect_boxes(session, image: np.ndarray, classes: tuple[int, ...]) -> np.ndarray | None:
    """YOLOX boxes (x0, y0, x1, y1 in image pixels) of `classes`; None when nothing at all was detected."""
    ratio = min(DETECTOR_SIZE[0] / image.shape[0], DETECTOR_SIZE[1] / image.shape[1])
    height, width = int(image.shape[0] * ratio), int(image.shape[1] * ratio)
    canvas = np.full((*DETECTOR_SIZE, 3), LETTERBOX_FILL, np.uint8)
    canvas[:height, :width] = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    predictions = _run(session, np.ascontiguousarray(canvas.transpose(2, 0, 1), np.float32)[None])[0][0].copy()
    # Decoded in place, so in float32 as sd-webui-controlnet's `demo_postprocess`.
    grid, stride = _grid()
    predictions[:, :2] = (predictions[:, :2] + grid) * stride
    predictions[:, 2:4] = np.exp(predictions[:, 2:4]) * stride
    centres, sizes = predictions[:, :2], predictions[:, 2:4]
    boxes = np.concatenate([centres - sizes / 2.0, centres + sizes / 2.0], axis=1)
    boxes /= ratio
    scores = predictions[:, 4:5] * predictions[:, 5:]
    detections = _classwise_nms(boxes, scores)
    if detections is None:
        return None
    wanted = (detections[:, 4] > BOX_SCORE) & np.isin(detections[:, 5], classes)
    return detections[wanted, :4]


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Each prediction's cell (x, y) and stride, in YOLOX's order (stride 8 row by row, then 16, then 32)."""
    cells, strides = [], []
    for stride in STRIDES:
        xs, ys = np.meshgrid(np.arange(DETECTOR_SIZE[1] // stride), np.arange(DETECTOR_SIZE[0] // stride))
        cells.append(np.stack((xs, ys), 2).reshape(-1, 2))
        strides.append(np.full((cells[-1].shape[0], 1), stride))
    return np.concatenate(cells), np.concatenate(strides)


def _classwise_nms(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray | None:
    """Rows (x0, y0, x1, y1, score, class) that survive NMS within each class, classes in order."""
    kept = []
    for label in range(scores.shape[1]):
        valid = scores[:, label] > NMS_SCORE
        if valid.any():
            keep = _nms(boxes[valid], scores[valid, label])
            kept.append(np.concatenate([boxes[valid][keep], scores[valid, label][keep, None],
                                        np.full((len(keep), 1), label)], axis=1))
    return np.concatenate(kept) if kept else None


def _nms(boxes: np.ndarray, scores: np.ndarray) -> list[int]:
    """Greedy NMS, highest score first; areas with YOLOX's +1 pixel convention."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]) + 1)
        overlap = width * height / (areas[best] + areas[rest] - width * height)
        order = rest[overlap <= NMS_IOU]
    return keep


def estimate_keypoints(session, image: np.ndarray, boxes: np.ndarray, input_size: tuple[int, int]):
    """RTMPose on each box (the whole image when there is none): keypoints (N, K, 2) in image pixels and their
    scores (N, K)."""
    if len(boxes) == 0:
        boxes = np.array([[0, 0, image.shape[1], image.shape[0]]], np.float64)
    keypoints, scores = [], []
    for box in boxes:
        centre = (box[:2] + box[2:]) * 0.5
        scale = _fix_aspect((box[2:] - box[:2]) * BOX_PADDING, input_size[0] / input_size[1])
        crop = cv2.warpAffine(image, _warp_matrix(centre, scale, input_size), input_size, flags=cv2.INTER_LINEAR)
        crop = (crop - PIXEL_MEAN) / PIXEL_STD
        simcc_x, simcc_y = _run(session, np.ascontiguousarray(crop.transpose(2, 0, 1)[None], np.float32))[:2]
        locations, values = _simcc_maximum(simcc_x, simcc_y)
        keypoints.append((locations / SIMCC_SPLIT / np.asarray(input_size) * scale + centre - scale / 2)[0])
        scores.append(values[0])
    return np.array(keypoints), np.array(scores)


def _fix_aspect(scale: np.ndarray, aspect: float) -> np.ndarray:
    """Grow the box's (w, h) to the input's aspect ratio (w / h)."""
    width, height = scale
    return np.array([width, width / aspect]) if width > height * aspect else np.array([height * aspect, height])


def _warp_matrix(centre: np.ndarray, scale: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """The affine map of the box onto the input (no rotation), from three point pairs in float32 as mmpose."""
    out_w, out_h = output_size
    source = np.zeros((3, 2), np.float32)
    source[0] = centre
    source[1] = centre + np.array([0.0, scale[0] * -0.5])
    source[2] = _third_point(source[0], source[1])
    target = np.zeros((3, 2), np.float32)
    target[0] = [out_w * 0.5, out_h * 0.5]
    target[1] = np.array([out_w * 0.5, out_h * 0.5]) + np.array([0.0, out_w * -0.5])
    target[2] = _third_point(target[0], target[1])
    return cv2.getAffineTransform(source, target)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    direction = a - b
    return b + np.r_[-direction[1], direction[0]]


def _simcc_maximum(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per keypoint: the argmax along x and y and, as its score, the smaller of the two maxima (locations of
    keypoints scoring ≤ 0 are −1)."""
    count, keypoints, _ = simcc_x.shape
    flat_x, flat_y = simcc_x.reshape(count * keypoints, -1), simcc_y.reshape(count * keypoints, -1)
    locations = np.stack((flat_x.argmax(axis=1), flat_y.argmax(axis=1)), axis=-1).astype(np.float32)
    values = np.minimum(flat_x.max(axis=1), flat_y.max(axis=1))
    locations[values <= 0.0] = -1
    return locations.reshape(count, keypoints, 2), values.reshape(count, keypoints)


@dataclass
class PoseEstimator:
    """A YOLOX detector and an RTMPose model (DWPose whole body or AP-10K animals), as ONNX files."""

    detector_file: Path
    pose_file: Path
    classes: tuple[int, ...] = PERSON_CLASSES
    input_size: tuple[int, int] = WHOLEBODY_INPUT
    device: str = "cpu"

    def __post_init__(self):
        self._sessions = None

    def to(self, device):
        self.device, self._sessions = getattr(device, "type", str(device)), None
        return self

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Keypoints (N, K, 2) and scores (N, K) of every detected instance; None when nothing was detected."""
        if self._sessions is None:
            self._sessions = (onnx_session(self.detector_file, self.device), onnx_session(self.pose_file, self.device))
        detector, pose = self._sessions
        boxes = detect_boxes(detector, image, self.classes)
        if boxes is None:
            return None
        return estimate_keypoints(pose, image, boxes, self.input_size)
