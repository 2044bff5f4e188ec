"""ADetailer's mediapipe detectors (`mediapipe_face_*`) on the mediapipe package's Tasks API, model files offline.

Box and mask rules follow ADetailer v25.3.0 (Bing-su/adetailer, AGPL-3.0, `adetailer/mediapipe.py`): face
detection → its boxes as filled rectangles; face mesh → the convex hull of each face's landmarks; eyes only →
the hulls of the two eyes' landmarks in one mask per face; mesh confidences are 1.0 (mediapipe gives none)
and the boxes are the masks' bounding boxes. ADetailer runs mediapipe's legacy `solutions` API, whose models
ship inside mediapipe ≤ 0.10.21; mediapipe ≥ 0.10.30 has only the Tasks API and no bundled models, so the
files are read from `models/mediapipe/` (the same detection models ADetailer's mediapipe runs, and Google's
`face_landmarker.task` for the mesh).
"""

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.detailer.masks import Detections, box_mask
from engine.errors import NotFoundError, UnsupportedError


logger = logging.getLogger(__name__)

MEDIAPIPE_FOLDER = "mediapipe"
# ADetailer uses 20 as the face mesh's max_num_faces.
MAX_FACES = 20


@dataclass(frozen=True)
class MediapipeModel:
    """One `ad_model` name: which mediapipe task runs it and the model file it needs."""

    name: str
    task: str  # "detection", "mesh" or "eyes"
    file: str
    source: str  # where the file comes from, for the error when it is missing


_DETECTION_SOURCE = "mediapipe 0.10.21's wheel, mediapipe/modules/face_detection/"
_LANDMARKER_SOURCE = "Google's MediaPipe models, face_landmarker/face_landmarker/float16/1/"
MEDIAPIPE_MODELS = {
    model.name: model
    for model in (
        # ADetailer's `model_selection` 0 (short range, faces within 2 m) and 1 (full range, sparse).
        MediapipeModel("mediapipe_face_short", "detection", "face_detection_short_range.tflite", _DETECTION_SOURCE),
        MediapipeModel(
            "mediapipe_face_full", "detection", "face_detection_full_range_sparse.tflite", _DETECTION_SOURCE
        ),
        MediapipeModel("mediapipe_face_mesh", "mesh", "face_landmarker.task", _LANDMARKER_SOURCE),
        MediapipeModel("mediapipe_face_mesh_eyes_only", "eyes", "face_landmarker.task", _LANDMARKER_SOURCE),
    )
}


def is_mediapipe_model(name: str) -> bool:
    return name.lower().startswith("mediapipe")


def mediapipe_model_file(models_dir: Path, name: str, field: str) -> Path:
    """The model file an `ad_model` mediapipe name needs, checked to exist.

    Raises:
        NotFoundError: an unknown mediapipe name (listing the four), or its file is not in `models/mediapipe/`.
    """
    model = MEDIAPIPE_MODELS.get(name)
    if model is None:
        raise NotFoundError(field, f"unknown mediapipe model {name!r}; ADetailer's are {sorted(MEDIAPIPE_MODELS)}")
    path = Path(models_dir) / MEDIAPIPE_FOLDER / model.file
    if not path.is_file():
        raise NotFoundError(field, f"{name} needs {MEDIAPIPE_FOLDER}/{model.file} in the models folder (from "
                                   f"{model.source}); it is not there")
    return path


def detection_result_to_detections(detections, image_size: tuple[int, int]) -> Detections:
    """Face detector results (mediapipe `Detection`s: a pixel `bounding_box`, `categories[0].score`) → boxes
    with filled rectangle masks, as ADetailer's `mediapipe_face_detection`."""
    boxes, confidences = [], []
    for detection in detections:
        box = detection.bounding_box
        x1, y1 = float(box.origin_x), float(box.origin_y)
        boxes.append((x1, y1, x1 + box.width, y1 + box.height))
        confidences.append(float(detection.categories[0].score))
    return Detections(image_size, tuple(boxes), tuple(confidences), tuple(box_mask(image_size, b) for b in boxes))


def landmarks_to_detections(
    faces, image_size: tuple[int, int], indices: tuple[np.ndarray, ...] | None = None
) -> Detections:
    """Face landmarks (one list of mediapipe `NormalizedLandmark`s per face) → one mask per face: the convex
    hull of all its landmarks, or with `indices` the hull of each index group (the eyes) in the same mask.
    Points are truncated to pixels (ADetailer's `dtype=int`); confidences are 1.0."""
    import cv2

    width, height = image_size
    masks = []
    for landmarks in faces:
        points = np.array([[point.x * width, point.y * height] for point in landmarks], dtype=int)
        groups = [points] if indices is None else [points[group] for group in indices]
        mask = Image.new("L", image_size, 0)
        draw = ImageDraw.Draw(mask)
        for group in groups:
            draw.polygon(cv2.convexHull(group).reshape(-1).tolist(), fill=255)
        if mask.getbbox() is not None:
            masks.append(mask)
    boxes = tuple(tuple(float(v) for v in mask.getbbox()) for mask in masks)
    return Detections(image_size, boxes, (1.0,) * len(masks), tuple(masks))


def eye_indices() -> tuple[np.ndarray, np.ndarray]:
    """The landmark indices of the left and right eye contours (the legacy `FACEMESH_LEFT_EYE` /
    `FACEMESH_RIGHT_EYE` sets, which the Tasks API's connections repeat)."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections

    return tuple(
        np.array([index for c in connections for index in (c.start, c.end)])
        for connections in (FaceLandmarksConnections.FACE_LANDMARKS_LEFT_EYE,
                            FaceLandmarksConnections.FACE_LANDMARKS_RIGHT_EYE)
    )


def import_mediapipe_vision():
    """mediapipe's Tasks vision module, or an `UnsupportedError` saying the package is missing or broken."""
    try:
        import mediapipe
        from mediapipe.tasks.python import BaseOptions, vision
    except (ImportError, OSError) as exc:
        raise UnsupportedError("ad_model", f"mediapipe detectors need the mediapipe package, which cannot be "
                                           f"imported here ({exc})") from None
    return mediapipe, BaseOptions, vision


class MediapipeDetector:
    """One `mediapipe_face_*` model. Like ADetailer, a detector is built per call with the call's confidence
    (mediapipe fixes it at creation); the model file is read once."""

    def __init__(self, model: MediapipeModel, path: Path):
        self.model = model
        self.path = Path(path)
        self._buffer = self.path.read_bytes()
        self._lock = threading.Lock()
        import_mediapipe_vision()  # fail now, naming the problem, rather than at the first image

    def detect(self, image: Image.Image, confidence: float) -> Detections:
        mediapipe, base_options, vision = import_mediapipe_vision()
        image = image.convert("RGB")
        frame = mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=np.ascontiguousarray(np.array(image)))
        base = base_options(model_asset_buffer=self._buffer)
        with self._lock:
            if self.model.task == "detection":
                options = vision.FaceDetectorOptions(base_options=base, min_detection_confidence=confidence)
                with vision.FaceDetector.create_from_options(options) as detector:
                    return detection_result_to_detections(detector.detect(frame).detections, image.size)
            options = vision.FaceLandmarkerOptions(base_options=base, num_faces=MAX_FACES,
                                                   min_face_detection_confidence=confidence)
            with vision.FaceLandmarker.create_from_options(options) as landmarker:
                faces = landmarker.detect(frame).face_landmarks
        return landmarks_to_detections(faces, image.size, eye_indices() if self.model.task == "eyes" else None)
