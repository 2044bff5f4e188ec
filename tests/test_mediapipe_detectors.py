"""ADetailer's mediapipe detectors: ADetailer's box and mask rules on mediapipe's own result types, and the real
mediapipe face detector (the BlazeFace short-range model ADetailer runs, in tests/fixtures/mediapipe) offline.

What is proven where: the conversion tests feed mediapipe's real `Detection` / `NormalizedLandmark` objects
built by hand, so they check our rules, not mediapipe's models. The face-detector tests run mediapipe itself on
a real photograph that scikit-image ships (NASA's astronaut portrait). The face-mesh models (Google's
`face_landmarker.task`) are not available offline here, so the mesh and eyes-only detectors run only through
the conversion tests and the missing-file error.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.detailer.masks import box_mask
from engine.errors import NotFoundError


mp_containers = pytest.importorskip("mediapipe.tasks.python.components.containers")
FIXTURE = Path(__file__).parent / "fixtures" / "mediapipe" / "face_detection_short_range.tflite"


def astronaut(size: int) -> Image.Image:
    import skimage

    path = Path(os.path.dirname(skimage.__file__)) / "data" / "astronaut.png"
    return Image.open(path).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def test_face_detections_become_filled_rectangles():
    from engine.detailer.mediapipe import detection_result_to_detections

    detection = mp_containers.Detection(
        bounding_box=mp_containers.BoundingBox(origin_x=10, origin_y=5, width=20, height=12),
        categories=[mp_containers.Category(index=0, score=0.8)], keypoints=[],
    )
    found = detection_result_to_detections([detection], (64, 48))
    assert found.boxes == ((10.0, 5.0, 30.0, 17.0),) and found.confidences == (0.8,)
    expected = np.zeros((48, 64), np.uint8)
    expected[5:18, 10:31] = 255  # PIL draws both corners, as ADetailer's create_mask_from_bbox
    assert np.array_equal(np.asarray(found.masks[0]), expected)


def ring(center, radius, count=478, eyes=None):
    """478 normalised landmarks on a circle; with `eyes`, the eye contour indices moved to two small squares."""
    from engine.detailer.mediapipe import eye_indices

    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    points = [[center[0] + radius * np.cos(a), center[1] + radius * np.sin(a)] for a in angles]
    if eyes is not None:
        for group, (x, y) in zip(eye_indices(), eyes, strict=True):
            for k, index in enumerate(sorted(set(group.tolist()))):
                points[index] = [x + 0.02 * (k % 2), y + 0.02 * (k // 2 % 2)]
    return [mp_containers.NormalizedLandmark(x=px, y=py) for px, py in points]


def test_face_mesh_mask_is_the_convex_hull_of_the_landmarks():
    from engine.detailer.mediapipe import landmarks_to_detections

    found = landmarks_to_detections([ring((0.5, 0.5), 0.25)], (100, 100))
    mask = np.asarray(found.masks[0])
    assert mask[50, 50] == 255 and mask[50, 73] == 255  # inside the hull
    assert mask[30, 30] == 0 and mask[50, 80] == 0  # outside the circle of radius 25 px
    assert found.boxes == (tuple(float(v) for v in found.masks[0].getbbox()),)
    assert found.confidences == (1.0,)
    assert len(landmarks_to_detections([ring((0.3, 0.3), 0.1), ring((0.7, 0.7), 0.1)], (100, 100))) == 2


def test_eyes_only_masks_just_the_two_eye_hulls_in_one_mask():
    from engine.detailer.mediapipe import eye_indices, landmarks_to_detections

    faces = [ring((0.5, 0.5), 0.4, eyes=[(0.30, 0.40), (0.60, 0.40)])]
    (mask,) = landmarks_to_detections(faces, (200, 200), eye_indices()).masks
    pixels = np.asarray(mask)
    assert pixels[82, 62] == 255 and pixels[82, 122] == 255  # each eye square
    assert pixels[100, 100] == 0 and pixels[82, 92] == 0  # the rest of the face, between the eyes
    assert (pixels > 0).sum() <= 2 * 5 * 5  # two 4×4-pixel squares, edges included


def test_eye_indices_are_the_legacy_face_mesh_eye_contours():
    from engine.detailer.mediapipe import eye_indices

    left, right = (set(group.tolist()) for group in eye_indices())
    # ADetailer's FACEMESH_LEFT_EYE / FACEMESH_RIGHT_EYE: 16 contour points each.
    assert len(left) == len(right) == 16 and {263, 362} <= left and {33, 133} <= right


@pytest.mark.parametrize(("size", "box"), [(512, (177, 82, 272, 177)), (128, (44, 20, 67, 43))])
def test_the_real_mediapipe_detector_finds_the_astronauts_face(size, box):
    from engine.detailer.mediapipe import MEDIAPIPE_MODELS, MediapipeDetector

    detector = MediapipeDetector(MEDIAPIPE_MODELS["mediapipe_face_short"], FIXTURE)
    found = detector.detect(astronaut(size), 0.3)
    assert len(found) == 1 and found.confidences[0] > 0.9
    assert np.allclose(found.boxes[0], box, atol=2)  # around her face, in image pixels
    assert np.array_equal(np.asarray(found.masks[0]), np.asarray(box_mask(found.image_size, found.boxes[0])))
    # The confidence threshold is mediapipe's own: above the face's score nothing is returned.
    assert len(detector.detect(astronaut(size), 0.99)) == 0


def test_the_real_detector_finds_nothing_on_a_flat_image():
    from engine.detailer.mediapipe import MEDIAPIPE_MODELS, MediapipeDetector

    detector = MediapipeDetector(MEDIAPIPE_MODELS["mediapipe_face_short"], FIXTURE)
    assert len(detector.detect(Image.new("RGB", (128, 128), (90, 90, 90)), 0.3)) == 0


@pytest.fixture(scope="module")
def engine_with_mediapipe(tmp_path_factory):
    from engine import Engine
    from engine.demo.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("mediapipe-models")
    write_tiny_checkpoint("sd15", "tiny-sd15", root)
    (root / "mediapipe").mkdir()
    shutil.copy(FIXTURE, root / "mediapipe" / FIXTURE.name)
    return Engine.from_models_dir(root, device="cpu")


def test_adetailer_inpaints_the_face_mediapipe_finds(engine_with_mediapipe):
    """Inpainting only a corner of the astronaut keeps her face for ADetailer, where mediapipe finds it: against
    the same request without ADetailer, only pixels of that face box change."""
    from engine.imaging.png import png_base64

    image = astronaut(128)
    corner = Image.new("L", (128, 128), 0)
    corner.paste(255, (112, 112, 128, 128))
    payload = {"init_images": [png_base64(image, "")], "mask": png_base64(corner, ""), "mask_blur": 0,
               "inpainting_fill": 1, "inpaint_full_res": True, "prompt": "a face", "seed": 2, "steps": 4,
               "width": 128, "height": 128, "denoising_strength": 0.5}
    unit = {"ad_model": "mediapipe_face_short", "ad_confidence": 0.8, "ad_mask_blur": 0, "ad_dilate_erode": 0,
            "ad_inpaint_only_masked_padding": 0}
    plain = engine_with_mediapipe.img2img(payload)
    result = engine_with_mediapipe.img2img({**payload, "alwayson_scripts": {"ADetailer": {"args": [True, False,
                                                                                                   unit]}}})
    before, after = np.asarray(plain.images[0]).astype(int), np.asarray(result.images[0]).astype(int)
    changed = np.argwhere((before != after).any(axis=2))
    assert len(changed) > 0
    (top, left), (bottom, right) = changed.min(axis=0), changed.max(axis=0)
    assert left >= 40 and right <= 71 and top >= 16 and bottom <= 47  # the face box (44, 20, 67, 43) ± 4
    assert "ADetailer model: mediapipe_face_short" in result.infotexts[0]


def test_no_face_means_adetailer_leaves_the_image(engine_with_mediapipe):
    payload = {"prompt": "x", "seed": 2, "steps": 2, "width": 64, "height": 64,
               "alwayson_scripts": {"ADetailer": {"args": [True, False, {"ad_model": "mediapipe_face_short",
                                                                          "ad_confidence": 0.9}]}}}
    # The tiny model's noise can score ~0.3 as a face with BlazeFace; at 0.9 mediapipe finds nothing in it.
    plain = engine_with_mediapipe.txt2img({**payload, "alwayson_scripts": {}})
    result = engine_with_mediapipe.txt2img(payload)
    assert result.images[0].tobytes() == plain.images[0].tobytes()
    assert any("mediapipe_face_short found nothing" in warning for warning in result.warnings)


@pytest.mark.parametrize(("model", "message"), [
    ("mediapipe_face_mesh", "needs mediapipe/face_landmarker.task in the models folder"),
    ("mediapipe_face_full", "needs mediapipe/face_detection_full_range_sparse.tflite"),
    ("mediapipe_face_bogus", "unknown mediapipe model 'mediapipe_face_bogus'"),
])
def test_missing_mediapipe_files_are_errors_naming_them(engine_with_mediapipe, model, message):
    payload = {"prompt": "x", "steps": 2, "width": 64, "height": 64,
               "alwayson_scripts": {"ADetailer": {"args": [True, False, {"ad_model": model}]}}}
    with pytest.raises(NotFoundError, match=rf"^alwayson_scripts\.ADetailer\.args\[2\]\.ad_model: .*{message}"):
        engine_with_mediapipe.txt2img(payload)


def test_ad_model_listing_offers_the_mediapipe_models_whose_files_are_there(engine_with_mediapipe):
    from engine.detailer.detect import ad_model_names

    assert ad_model_names(engine_with_mediapipe.catalog) == ["mediapipe_face_short"]
