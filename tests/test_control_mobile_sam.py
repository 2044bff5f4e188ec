"""mobile_sam through the worker (`/controlnet/detect`) against controlnet_aux's own `SamDetector`, on the demo
models' random-weight `mobile_sam/mobile_sam.pt` (MobileSAM's vit_t).

The automatic mask generator's 32 × 32 point grid takes minutes per image on this CPU, so both sides run the
same smaller grid (the grid is the library's code either way); everything else is the module as it runs.
"""

import base64
import io
import types

import numpy as np
import pytest
from PIL import Image

from engine.control import api
from engine.control.maps import mobile_sam
from engine.control.maps.annotators import MOBILE_SAM, AnnotatorStore, quiet_import


GRID = 2  # points per side in the tests


def _b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _image() -> np.ndarray:
    """64 × 128: at processor_res 64 sd-webui-controlnet's pad to a multiple of 64 adds nothing, so the reference
    can take the image as it is."""
    return np.random.default_rng(5).integers(0, 255, (64, 128, 3)).astype(np.uint8)


@pytest.fixture
def small_grid(monkeypatch):
    monkeypatch.setattr(mobile_sam, "POINTS_PER_SIDE", GRID)


def test_the_map_matches_controlnet_aux_sam_detector_and_leaves_numpys_rng_alone(demo_models, small_grid):
    segment_anything = quiet_import("controlnet_aux.segment_anything")
    image = _image()
    before = np.random.get_state()[1].copy()
    body = api.detect(types.SimpleNamespace(root=demo_models), {"controlnet_module": "mobile_sam",
                                                                "controlnet_input_images": [_b64(image)],
                                                                "controlnet_processor_res": 64})
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).convert("RGB"))
    assert np.array_equal(np.random.get_state()[1], before)

    # The reference: controlnet_aux's SamDetector on the same weights, NumPy's global RNG seeded as
    # sd-webui-controlnet seeds it (the detect endpoint's seed is 0).
    sam = mobile_sam.load_mobile_sam(__import__("torch").load(
        demo_models / "ControlNetAnnotators" / "mobile_sam" / MOBILE_SAM, weights_only=True))
    reference = segment_anything.SamDetector(segment_anything.SamAutomaticMaskGenerator(sam, points_per_side=GRID))
    state = np.random.get_state()
    try:
        np.random.seed(0)
        expected = reference(image, detect_resolution=64, image_resolution=64, output_type="np")
    finally:
        np.random.set_state(state)
    assert got.shape == expected.shape == (64, 128, 3)
    assert len(np.unique(got.reshape(-1, 3), axis=0)) > 1  # some mask was painted: the comparison means something
    np.testing.assert_array_equal(got, expected)


def test_the_colours_follow_the_seed(demo_models, small_grid):
    detector = AnnotatorStore(demo_models).get("mobile_sam")
    image = _image()
    assert np.array_equal(detector(image, 64, 1), detector(image, 64, 1))
    assert not np.array_equal(detector(image, 64, 1), detector(image, 64, 2))


def test_no_mask_gives_a_black_map():
    assert not mobile_sam.paint_masks([], 8, 8, 0).any()


def test_a_missing_checkpoint_names_the_file_and_download_group(tmp_path):
    from engine.errors import NotFoundError

    with pytest.raises(NotFoundError, match=r"mobile_sam\.pt .*download_models\.py --only annotator-mobile_sam"):
        AnnotatorStore(tmp_path).get("mobile_sam")
