"""Detection through ultralytics' real loading and prediction path, on tiny random-weight YOLOv8n `.pt` files."""

import socket

import numpy as np
import pytest
from PIL import Image

from engine.detailer.args import ADetailerUnit
from engine.detailer.demo import write_tiny_yolo
from engine.detailer.detect import DetectorCache, YoloDetector, ad_model_listing
from engine.detailer.masks import prepare_masks
from engine.errors import NotFoundError
from engine.resources.catalog import ModelCatalog


# Random weights score every box about 0.012: a threshold below that lets detections through.
LOW_CONFIDENCE = 1e-4


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_tiny_yolo(root)
    return root


@pytest.fixture(scope="module")
def cache():
    return DetectorCache(device="auto")


@pytest.fixture(scope="module")
def image():
    """Not square, so a letterboxed mask stretched to the image would be visibly misplaced."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 64, 3), dtype=np.uint8))


def test_demo_writes_one_class_detectors(models_dir):
    names = sorted(path.name for path in (models_dir / "adetailer").iterdir())

    assert names == ["face_yolov8n.pt", "person_yolov8n-seg.pt"]


def test_box_model_gives_box_masks_at_image_size(models_dir, cache, image):
    detector = cache.get(models_dir / "adetailer" / "face_yolov8n.pt")

    found = detector.detect(image, LOW_CONFIDENCE)

    assert not detector.is_segmentation and len(found) > 0
    assert found.image_size == (64, 96)
    assert all(c >= LOW_CONFIDENCE for c in found.confidences)
    assert list(found.confidences) == sorted(found.confidences, reverse=True)
    for box, mask in zip(found.boxes, found.masks, strict=True):
        assert mask.size == (64, 96) and mask.mode == "L"
        x1, y1, x2, y2 = mask.getbbox()
        assert abs(x1 - box[0]) <= 1 and abs(y1 - box[1]) <= 1 and abs(x2 - 1 - box[2]) <= 1 and abs(y2 - 1 - box[3]) <= 1


def test_segmentation_masks_are_registered_to_the_image(models_dir, cache, image):
    detector = cache.get(models_dir / "adetailer" / "person_yolov8n-seg.pt")

    found = detector.detect(image, LOW_CONFIDENCE)

    assert detector.is_segmentation and len(found) > 0
    for box, mask in zip(found.boxes, found.masks, strict=True):
        pixels = np.asarray(mask)
        assert mask.size == (64, 96) and set(np.unique(pixels)) <= {0, 255}
        # ultralytics crops each mask to its box: in image coordinates nothing may lie outside it.
        rows, cols = np.nonzero(pixels)
        if len(rows):
            assert cols.min() >= box[0] - 1 and cols.max() <= box[2] + 1
            assert rows.min() >= box[1] - 1 and rows.max() <= box[3] + 1


def test_a_high_threshold_finds_nothing(models_dir, cache, image):
    found = cache.get(models_dir / "adetailer" / "face_yolov8n.pt").detect(image, 0.3)

    assert len(found) == 0 and found.masks == ()


def test_models_are_loaded_once_per_path(models_dir, cache):
    path = models_dir / "adetailer" / "face_yolov8n.pt"

    assert cache.get(path) is cache.get(path)
    assert cache.get(path) is not cache.get(models_dir / "adetailer" / "person_yolov8n-seg.pt")


def test_loading_and_detecting_make_no_network_connection(models_dir, image, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)

    found = YoloDetector(models_dir / "adetailer" / "face_yolov8n.pt", device="cpu").detect(image, LOW_CONFIDENCE)

    assert len(found) > 0


def test_a_missing_file_is_an_error_not_a_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="yolov8n.pt"):
        DetectorCache(device="cpu").get(tmp_path / "yolov8n.pt")  # an official asset name ultralytics would fetch


def test_catalog_names_resolve_and_are_listed(models_dir, cache):
    catalog = ModelCatalog(models_dir)

    assert cache.for_model(catalog, "face_yolov8n.pt") is cache.get(models_dir / "adetailer" / "face_yolov8n.pt")
    assert cache.for_model(catalog, "face_yolov8n").path.name == "face_yolov8n.pt"
    with pytest.raises(NotFoundError, match="person_yolov8n-seg.pt") as caught:
        cache.for_model(catalog, "hand_yolov8n.pt", field="alwayson_scripts.ADetailer.args[2].ad_model")
    assert caught.value.field == "alwayson_scripts.ADetailer.args[2].ad_model"
    assert ad_model_listing(catalog) == {"ad_model": ["face_yolov8n.pt", "person_yolov8n-seg.pt"]}


def test_detections_feed_the_unit_mask_pipeline(models_dir, cache, image):
    unit = ADetailerUnit(ad_model="face_yolov8n.pt", ad_confidence=LOW_CONFIDENCE, ad_mask_k=2, ad_dilate_erode=4)
    found = cache.get(models_dir / "adetailer" / "face_yolov8n.pt").detect(image, unit.ad_confidence)

    masks = prepare_masks(found, unit.mask_options())

    assert len(masks) == 2 and all(mask.size == image.size for mask in masks)
