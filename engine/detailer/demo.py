"""Tiny random-weight YOLOv8n detectors saved as real ultralytics `.pt` files in `models/adetailer`.

Built from ultralytics' packaged YOLOv8n architecture (no download), one class each like ADetailer's models.
Random weights give every box the same confidence of about 0.012: a payload must lower `ad_confidence` below
that (and set `ad_mask_k`, up to 300 boxes pass) to see detections.
"""

import logging
from pathlib import Path

from engine.detailer.detect import import_yolo


logger = logging.getLogger(__name__)

ADETAILER_FOLDER = "adetailer"
# (file name, packaged architecture, class name): a face detector (boxes) and a person segmenter (masks).
TINY_DETECTORS = (
    ("face_yolov8n.pt", "yolov8n.yaml", "face"),
    ("person_yolov8n-seg.pt", "yolov8n-seg.yaml", "person"),
)


def write_tiny_yolo(models_dir: Path, seed: int = 0) -> list[Path]:
    """Write the tiny detectors under `models_dir/adetailer/`; returns their paths."""
    import torch

    yolo_class = import_yolo()  # first: it sets the offline environment ultralytics reads at import
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    builders = {"yolov8n.yaml": DetectionModel, "yolov8n-seg.yaml": SegmentationModel}
    folder = Path(models_dir) / ADETAILER_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (file_name, architecture, class_name) in enumerate(TINY_DETECTORS):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + index)
            yolo = yolo_class(architecture)  # an 80-class model; its network is replaced by a 1-class one
            network = builders[architecture](architecture, nc=1, verbose=False)
        network.names = {0: class_name}
        network.args, network.task = yolo.model.args, yolo.model.task
        yolo.model = network
        path = folder / file_name
        yolo.save(path)
        written.append(path)
        logger.info("wrote tiny %s detector %s", class_name, path)
    return written
