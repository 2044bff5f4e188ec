"""Object detection with ultralytics YOLO `.pt` models from `models/adetailer`: offline, each model loaded once.

ultralytics is AGPL-3.0 and imported lazily, only when a detector is first loaded. Its `.pt` files are pickles
(`torch.load(weights_only=False)`): load only trusted files.
"""

import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from engine.detailer.masks import Detections, box_mask
from engine.threads import keep_torch_threads


if TYPE_CHECKING:
    from engine.resources.catalog import ModelCatalog


logger = logging.getLogger(__name__)

# Read by ultralytics at import: no DNS "online" probe (hence no analytics), no pip auto-installs, quiet logs.
OFFLINE_ENVIRONMENT = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false", "YOLO_VERBOSE": "false"}
# ultralytics' (and ADetailer's) inference size: the image is letterboxed to 640 on its long side.
DEFAULT_IMAGE_SIZE = 640


class Detector(Protocol):
    def detect(self, image: Image.Image, confidence: float) -> Detections:
        """Objects on `image` with a confidence of at least `confidence`, most confident first."""
        ...


def import_yolo() -> Any:
    """`ultralytics.YOLO`, imported with the offline environment (unless the caller set those variables)."""
    if "ultralytics" not in sys.modules:
        for key, value in OFFLINE_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
    elif os.environ.get("YOLO_OFFLINE") != "1":
        logger.warning("ultralytics was imported before YOLO_OFFLINE=1 was set: it may probe the network")
    from ultralytics import YOLO

    return YOLO


def resolve_device(device: str) -> str:
    """"auto" → "cuda:0" when CUDA is available, else "cpu"; other values are passed to ultralytics as-is."""
    if device != "auto":
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


class YoloDetector:
    """One ultralytics YOLO detection or segmentation model, loaded once; `detect` is thread-safe."""

    def __init__(self, path: Path, device: str = "auto", image_size: int = DEFAULT_IMAGE_SIZE):
        path = Path(path)
        # A missing file must not reach ultralytics: it would try to download official names from GitHub.
        if not path.is_file():
            raise FileNotFoundError(f"no YOLO model at {path}")
        self.path = path
        self.device = resolve_device(device)
        self.image_size = image_size
        self._model = import_yolo()(str(path))
        self._lock = threading.Lock()
        logger.info("loaded YOLO %s model %s on %s", self._model.task, path.name, self.device)

    @property
    def is_segmentation(self) -> bool:
        return self._model.task == "segment"

    def detect(self, image: Image.Image, confidence: float) -> Detections:
        """Boxes in image pixels, most confident first (NMS order); masks are the segmentation masks at the
        image's own size (`retina_masks`, no letterbox misregistration), else filled boxes as in ADetailer."""
        image = image.convert("RGB")  # ultralytics reads a PIL image as RGB
        # ultralytics' first CPU predict sets torch's thread count for the process (engine.threads).
        with self._lock, keep_torch_threads():
            result = self._model.predict(image, conf=confidence, device=self.device, imgsz=self.image_size,
                                         retina_masks=True, verbose=False)[0]
        boxes = tuple(tuple(float(v) for v in box) for box in result.boxes.xyxy.cpu().numpy().tolist())
        confidences = tuple(float(v) for v in result.boxes.conf.cpu().numpy().tolist())
        if result.masks is None:
            masks = tuple(box_mask(image.size, box) for box in boxes)
        else:
            masks = tuple(_segment_mask(data, image.size) for data in result.masks.data.cpu().numpy())
        return Detections(image.size, boxes, confidences, masks)


def _segment_mask(data: np.ndarray, size: tuple[int, int]) -> Image.Image:
    mask = Image.fromarray(np.where(data > 0.5, 255, 0).astype(np.uint8))
    # retina masks already have the image size; resize only guards against an ultralytics change.
    return mask if mask.size == size else mask.resize(size, resample=Image.Resampling.NEAREST)


class DetectorCache:
    """Detectors by file, each loaded on first use and kept (ADetailer reloads the model for every image).

    With the `catalog` that lists the files, a damaged or vanished file is reported by name (and nothing is
    cached for it)."""

    def __init__(self, device: str = "auto", image_size: int = DEFAULT_IMAGE_SIZE, catalog=None, trusted=None):
        """`trusted`: an `engine.resources.trusted_pickles.TrustedPickles` every file is checked against before
        ultralytics unpickles it (None: no check)."""
        self.device = device
        self.image_size = image_size
        self.catalog = catalog
        self.trusted = trusted
        self._detectors: dict[Path, YoloDetector] = {}
        self._mediapipe: dict[str, Detector] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, field: str = "ad_model") -> YoloDetector:
        key = Path(path).resolve()
        with self._lock:
            if key not in self._detectors:
                self._detectors[key] = self._load(Path(path), key, field)
            return self._detectors[key]

    def resident(self) -> list[Path]:
        with self._lock:
            return list(self._detectors)

    def for_unit(self, model: str, path: Path, field: str = "ad_model") -> Detector:
        """The detector of an `ad_model` already resolved to `path`: mediapipe's for its names (cached by
        name, since two of them share a file), else the YOLO model in that file."""
        from engine.detailer.mediapipe import MEDIAPIPE_MODELS, MediapipeDetector, is_mediapipe_model

        if not is_mediapipe_model(model):
            return self.get(path, field)
        with self._lock:
            if model not in self._mediapipe:
                self._mediapipe[model] = MediapipeDetector(MEDIAPIPE_MODELS[model], path)
            return self._mediapipe[model]

    def for_model(self, catalog: "ModelCatalog", name: str, field: str = "ad_model") -> YoloDetector:
        """The detector for an `ad_model` name, resolved in the catalog's `adetailer` folder (unknown name →
        `NotFoundError` on `field` listing the models there)."""
        return self.get(catalog.find_file("adetailer", name, field).path, field)

    def _load(self, path: Path, key: Path, field: str) -> YoloDetector:
        if self.trusted is not None:
            self.trusted.check(key, field)  # ultralytics runs the pickle: refuse unknown files first
        if self.catalog is None:
            return YoloDetector(key, self.device, self.image_size)
        from engine.resources.model_files import load_listed  # deferred: it imports torch

        return load_listed(self.catalog, path, field, lambda: YoloDetector(key, self.device, self.image_size))


def ad_model_names(catalog: "ModelCatalog") -> list[str]:
    """The `ad_model` names a request may use: each `.pt` file's name under `models/adetailer`, as ADetailer
    lists them (first one wins if two subfolders hold the same name), then the mediapipe models whose files
    are in `models/mediapipe` (ADetailer lists its four always)."""
    from engine.detailer.mediapipe import MEDIAPIPE_FOLDER, MEDIAPIPE_MODELS

    yolo = [entry.path.name for entry in catalog.entries("adetailer")]
    mediapipe = [name for name, model in MEDIAPIPE_MODELS.items()
                 if (Path(catalog.root) / MEDIAPIPE_FOLDER / model.file).is_file()]
    return list(dict.fromkeys([*yolo, *mediapipe]))


def ad_model_listing(catalog: "ModelCatalog") -> dict[str, list[str]]:
    """The body of `GET /adetailer/v1/ad_model`."""
    return {"ad_model": ad_model_names(catalog)}
