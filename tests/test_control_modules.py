"""Every preprocessor module: through the worker's unit path (`/controlnet/detect`, the same runners a unit uses)
against the library's own output on the same image where a library does the work (controlnet_aux's detector
classes called directly, on random-weight annotator files in the real formats), and sd-webui-controlnet's
arithmetic for the weight-free ones."""

import base64
import io
import types

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.control.api import detect
from engine.control.maps import simple
from engine.control.maps.annotators import AnnotatorStore, quiet_import
from engine.control.modules import MODULES, find_module
from engine.errors import NotFoundError


SIZE = 64  # a multiple of 64 at processor_res 64: neither the worker nor controlnet_aux pads or resizes


def _image(size=(SIZE, SIZE), seed=0) -> np.ndarray:
    generator = np.random.default_rng(seed)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[8:40, 12:50] = (230, 200, 40)
    pixels[30:60, 20:60] = (20, 90, 210)
    return np.clip(pixels.astype(int) + generator.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)


def _b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _through_the_worker(catalog, module, image, resolution=SIZE, a=-1, b=-1, masks=None) -> np.ndarray:
    body = detect(catalog, {"controlnet_module": module, "controlnet_input_images": [_b64(image)],
                            "controlnet_processor_res": resolution, "controlnet_threshold_a": a,
                            "controlnet_threshold_b": b, "controlnet_masks": masks or []})
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).convert("RGB"))


@pytest.fixture(scope="module")
def catalog(demo_models):
    return types.SimpleNamespace(root=demo_models)


@pytest.fixture(scope="module")
def store(demo_models):
    return AnnotatorStore(demo_models)


def _library(detector, image, **options) -> np.ndarray:
    return np.asarray(detector(image, detect_resolution=SIZE, image_resolution=SIZE, output_type="np", **options))


@pytest.mark.parametrize(("module", "annotator", "options"), [
    ("hed", "hed", {}),
    ("hed_safe", "hed", {"safe": True}),
    ("scribble_hed", "hed", {"scribble": True}),
    ("pidinet", "pidinet", {}),
    ("pidinet_safe", "pidinet", {"safe": True}),
    ("pidinet_scribble", "pidinet", {"scribble": True}),
    ("pidinet_sketch", "pidinet", {"apply_filter": True}),
    ("mlsd", "mlsd", {"thr_v": 0.1, "thr_d": 0.1}),
    ("lineart", "lineart", {}),
    ("lineart_coarse", "lineart", {"coarse": True}),
])
def test_annotator_modules_match_controlnet_aux(catalog, store, module, annotator, options):
    image = _image()
    expected = _library(store.get(annotator), image, **options)
    np.testing.assert_array_equal(_through_the_worker(catalog, module, image), np.repeat(
        expected[:, :, :1], 3, axis=2) if expected.ndim == 3 else expected)


def test_padding_is_cut_off_as_sd_webui_controlnet_does(catalog):
    """A 64 × 80 image at resolution 64 is padded to 64 × 128 for the network, then cut back to 64 × 80."""
    out = _through_the_worker(catalog, "lineart", _image((80, SIZE)))
    assert out.shape == (SIZE, 80, 3)


def test_canny_and_lineart_standard_match_controlnet_aux(catalog):
    image = _image()
    canny = quiet_import("controlnet_aux.canny").CannyDetector()
    expected = np.asarray(canny(image, 50, 120, detect_resolution=SIZE, image_resolution=SIZE, output_type="np"))
    np.testing.assert_array_equal(_through_the_worker(catalog, "canny", image, a=50, b=120), expected)
    standard = quiet_import("controlnet_aux.lineart_standard").LineartStandardDetector()
    expected = np.asarray(standard(image, detect_resolution=SIZE, output_type="np"))
    np.testing.assert_array_equal(_through_the_worker(catalog, "lineart_standard", image), expected)


def test_shuffle_matches_controlnet_aux_for_the_same_numpy_seed():
    image = _image()
    np.random.seed(11)
    expected = quiet_import("controlnet_aux.shuffle").ContentShuffleDetector()(
        image, detect_resolution=SIZE, image_resolution=SIZE, output_type="np")
    state = np.random.get_state()[1].copy()
    np.testing.assert_array_equal(simple.shuffle(image, SIZE, 0, 0, seed=11), expected)
    assert not np.array_equal(simple.shuffle(image, SIZE, 0, 0, seed=12), expected)
    assert np.array_equal(np.random.get_state()[1], state)  # the global NumPy RNG is left alone


def test_weight_free_modules_follow_sd_webui_controlnet():
    image = _image()
    np.testing.assert_array_equal(simple.invert(image, 0.5, 0.5, 0.5), 255 - image)
    assert simple.tile_resample(image, 512, 1.0, 0).shape == image.shape  # rate < 1.1: unchanged
    assert simple.tile_resample(image, 512, 2.0, 0).shape == (32, 32, 3)
    np.testing.assert_array_equal(simple.blur_gaussian(image, SIZE, 3.0, 0), cv2.GaussianBlur(image, (0, 0), 3.0))
    binary = simple.threshold(image, SIZE, 100, 0)
    np.testing.assert_array_equal(binary[:, :, 0], np.where(image.min(axis=2) > 100, 255, 0))
    grid = simple.color_grid(np.repeat(np.repeat(image, 2, 0), 2, 1), SIZE * 2, 0, 0)
    assert len(np.unique(grid.reshape(-1, 3), axis=0)) <= 4  # 2 × 2 cells of 64 px
    luminance = simple.recolor_luminance(image, 512, 1.0, 0)
    np.testing.assert_array_equal(luminance[:, :, 0], cv2.cvtColor(image, cv2.COLOR_BGR2LAB)[:, :, 0])
    intensity = simple.recolor_intensity(image, 512, 1.0, 0)
    np.testing.assert_array_equal(intensity[:, :, 1], image.max(axis=2))
    xdog = simple.scribble_xdog(image, SIZE, 32, 0)
    assert set(np.unique(xdog)) <= {0, 255} and xdog.max() == 255


def test_inpaint_modules_need_a_mask_and_keep_it(catalog):
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[16:48, 16:48] = 255
    out = _through_the_worker(catalog, "inpaint_only", _image(), masks=[_b64(mask)])
    np.testing.assert_array_equal(out, _image())
    with pytest.raises(Exception, match="controlnet_masks"):
        _through_the_worker(catalog, "inpaint", _image())


def test_modules_with_missing_weights_name_the_download_group(tmp_path):
    with pytest.raises(NotFoundError, match=r"openpose annotator needs body_pose_model.pth.*annotator-openpose"):
        detect(types.SimpleNamespace(root=tmp_path), {"controlnet_module": "openpose_full",
                                                      "controlnet_input_images": [_b64(_image())]})


def test_every_module_is_found_by_name_and_label_and_has_a_runner():
    from engine.control.maps.registry import RUNNERS

    for spec in MODULES.values():
        assert find_module(spec.name, "m") is spec and find_module(spec.title, "m") is spec
        assert spec.output != "map" or spec.name in RUNNERS


LARGE = [("openpose", "openpose", {}), ("openpose_full", "openpose", {"include_hand": True, "include_face": True}),
         ("openpose_faceonly", "openpose", {"include_body": False, "include_face": True}),
         ("depth", "midas", {}), ("normal_bae", "normal_bae", {}), ("lineart_anime", "lineart_anime", {})]


@pytest.fixture(scope="module")
def large_annotators(tmp_path_factory):
    from engine.control.maps.demo import LARGE as WRITERS
    from engine.control.maps.demo import write_random_annotators

    root = tmp_path_factory.mktemp("annotators")
    write_random_annotators(root, tuple(WRITERS))
    return root


@pytest.mark.slow
@pytest.mark.parametrize(("module", "annotator", "options"), LARGE)
def test_large_annotator_modules_match_controlnet_aux(large_annotators, module, annotator, options):
    image = _image()
    expected = _library(AnnotatorStore(large_annotators).get(annotator), image, **options)
    got = _through_the_worker(types.SimpleNamespace(root=large_annotators), module, image)
    np.testing.assert_array_equal(got, expected if expected.ndim == 3 else np.repeat(expected[:, :, None], 3, 2))


@pytest.mark.slow
def test_lama_fills_the_masked_area_only(large_annotators):
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[16:48, 16:48] = 255
    out = _through_the_worker(types.SimpleNamespace(root=large_annotators), "inpaint_only+lama", _image(),
                              masks=[_b64(mask)])
    np.testing.assert_array_equal(out[:8], _image()[:8])
    assert not np.array_equal(out[24:40, 24:40], _image()[24:40, 24:40])
