"""ControlNet unit parsing (`alwayson_scripts.controlnet.args`) and the module table. No torch."""

import base64
import io

import pytest
from PIL import Image

from engine.control.api import model_list, module_list
from engine.control.modules import MODULES, find_module
from engine.control.units import (
    BALANCED,
    CONTROL_MORE_IMPORTANT,
    CROP_AND_RESIZE,
    HR_BOTH,
    HR_HIGH_RES_ONLY,
    HR_LOW_RES_ONLY,
    JUST_RESIZE,
    PROMPT_MORE_IMPORTANT,
    RESIZE_AND_FILL,
    parse_controlnet_args,
)
from engine.errors import NotFoundError, RequestError, UnsupportedError
from engine.resources.catalog import ModelCatalog


def _png_base64(colour=(200, 30, 60), size=(8, 6)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


IMAGE = _png_base64()


def _half_mask_base64(size=(8, 6)) -> str:
    """White on the left half, black on the right: a real mask (neither all black nor all white)."""
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


MASK = _half_mask_base64()


def _seed_unit(module: str, model: str, weight: float) -> dict:
    """A unit exactly as the InstantID example payload sends it (no `enabled`, `guidance` and `guidance_end`)."""
    return {"image": IMAGE, "module": module, "model": model, "weight": weight, "resize_mode": "Crop and Resize",
            "lowvram": False, "processor_res": 1024, "threshold_a": 75, "threshold_b": 75, "guidance": 1,
            "guidance_start": 0, "guidance_end": 1, "control_mode": "Balanced", "pixel_perfect": False}


EMBEDDING_UNIT = _seed_unit("InsightFace (InstantID)", "ip-adapter_instant_id_sdxl [eb2d3ec0]", 0.9)
KEYPOINT_UNIT = _seed_unit("instant_id_face_keypoints", "control_instant_id_sdxl [c5c25a50]", 1)


def _parse(*units: dict):
    return parse_controlnet_args({"controlnet": {"args": list(units)}})


@pytest.mark.parametrize("order", [(EMBEDDING_UNIT, KEYPOINT_UNIT), (KEYPOINT_UNIT, EMBEDDING_UNIT)])
def test_instant_id_payload_parses_in_either_order(order):
    units = _parse(*order)
    by_module = {unit.module.name: unit for unit in units}
    assert set(by_module) == {"instant_id_face_embedding", "instant_id_face_keypoints"}
    embedding, keypoints = by_module["instant_id_face_embedding"], by_module["instant_id_face_keypoints"]
    assert embedding.is_face_embedding and not embedding.is_instant_id_controlnet
    assert keypoints.is_instant_id_controlnet and not keypoints.is_face_embedding
    assert embedding.model == "ip-adapter_instant_id_sdxl [eb2d3ec0]" and embedding.weight == 0.9
    assert keypoints.resize_mode == CROP_AND_RESIZE and keypoints.control_mode == BALANCED
    assert keypoints.processor_res == 1024  # inside the resolution slider's 128..2048
    assert (keypoints.guidance_start, keypoints.guidance_end) == (0.0, 1.0)
    assert keypoints.image.size == (8, 6) and keypoints.image.getpixel((0, 0)) == (200, 30, 60)
    assert [unit.index for unit in units] == [0, 1]


def test_missing_enabled_means_on_and_false_means_skipped():
    units = _parse({**KEYPOINT_UNIT, "enabled": False}, EMBEDDING_UNIT)
    assert [unit.module.name for unit in units] == ["instant_id_face_embedding"]
    assert units[0].index == 1


def test_empty_tabs_are_skipped_even_when_enabled():
    assert _parse({"enabled": True, "module": "none", "model": "None", "image": ""}) == ()
    assert parse_controlnet_args({}) == () and parse_controlnet_args(None) == ()


def test_script_key_is_case_insensitive_and_a_bare_list_is_accepted():
    unit = {"module": "canny", "model": "control_v11p_sd15_canny", "image": IMAGE}
    assert len(parse_controlnet_args({"ControlNet": {"args": [unit]}})) == 1
    assert len(parse_controlnet_args({"controlnet": [unit]})) == 1


@pytest.mark.parametrize(
    "image",
    [
        IMAGE,
        "data:image/png;base64," + IMAGE,
        {"image": IMAGE, "mask": None},
        [IMAGE, None],
        [{"image": IMAGE}],
    ],
)
def test_image_spellings(image):
    (unit,) = _parse({"module": "canny", "model": "canny", "image": image})
    assert unit.image.mode == "RGB" and unit.image.getpixel((1, 1)) == (200, 30, 60)


def test_legacy_keys():
    (unit,) = _parse({"module": "canny", "model": "canny", "input_image": IMAGE, "guidance": 0.4, "lowvram": True})
    assert unit.guidance_end == 0.4 and unit.image.size == (8, 6)
    with pytest.raises(RequestError, match=r"args\[0\]\.guidance.*conflicts"):
        _parse({"module": "canny", "model": "canny", "image": IMAGE, "guidance": 0.4, "guidance_end": 0.9})


@pytest.mark.parametrize(
    ("given", "expected"),
    [("Just Resize", JUST_RESIZE), ("crop and resize", CROP_AND_RESIZE), ("Resize and Fill", RESIZE_AND_FILL),
     ("Inner Fit (Scale to Fit)", CROP_AND_RESIZE), ("Envelope (Outer Fit)", RESIZE_AND_FILL),
     (0, JUST_RESIZE), (1, CROP_AND_RESIZE), (2, RESIZE_AND_FILL)],
)
def test_resize_modes(given, expected):
    (unit,) = _parse({"module": "canny", "model": "canny", "image": IMAGE, "resize_mode": given})
    assert unit.resize_mode == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [("Balanced", BALANCED), ("My prompt is more important", PROMPT_MORE_IMPORTANT),
     ("ControlNet is more important", CONTROL_MORE_IMPORTANT), (0, BALANCED), (1, PROMPT_MORE_IMPORTANT),
     (2, CONTROL_MORE_IMPORTANT)],
)
def test_control_modes(given, expected):
    (unit,) = _parse({"module": "canny", "model": "canny", "image": IMAGE, "control_mode": given})
    assert unit.control_mode == expected


def test_hr_option_decides_the_passes():
    both, low, high = (_parse({"module": "canny", "model": "c", "image": IMAGE, "hr_option": option})[0]
                       for option in ("Both", "Low res only", 2))
    assert (both.hr_option, low.hr_option, high.hr_option) == (HR_BOTH, HR_LOW_RES_ONLY, HR_HIGH_RES_ONLY)
    assert both.runs_in(False) and both.runs_in(True)
    assert low.runs_in(False) and not low.runs_in(True)
    assert high.runs_in(True) and not high.runs_in(False)


def test_slider_defaults_as_sd_webui_controlnet_bound_check():
    (unit,) = _parse({"module": "canny", "model": "c", "image": IMAGE})
    assert (unit.processor_res, unit.threshold_a, unit.threshold_b) == (512, 100, 200)
    (unit,) = _parse({"module": "canny", "model": "c", "image": IMAGE, "processor_res": 4096,
                      "threshold_a": 50, "threshold_b": 300})
    assert (unit.processor_res, unit.threshold_a, unit.threshold_b) == (512, 50, 200)


def test_unknown_module_lists_the_supported_ones():
    with pytest.raises(NotFoundError, match=r"args\[0\]\.module.*'canny'.*'depth_midas'.*'instant_id_face_keypoints'"):
        _parse({"module": "depth_midasx", "model": "x", "image": IMAGE})


def test_a_known_but_unsupported_module_says_so():
    with pytest.raises(UnsupportedError, match=r"args\[0\]\.module: ControlNet module 'seg_ufade20k' .*not supported"):
        _parse({"module": "seg_ufade20k", "model": "x", "image": IMAGE})


@pytest.mark.parametrize(
    ("unit", "error", "message"),
    [
        ({"module": "canny", "model": "c", "image": IMAGE, "frobnicate": 1}, RequestError, r"frobnicate"),
        ({"module": "canny", "model": "None", "image": IMAGE}, RequestError, r"\.model: .*needs a model"),
        ({"module": "canny", "model": "c"}, RequestError, r"\.image: is required"),
        ({"module": "canny", "model": "c", "image": "not base64!"}, RequestError, r"\.image: is not valid base64"),
        ({"module": "canny", "model": "c", "image": IMAGE, "guidance_start": 0.8, "guidance_end": 0.2},
         RequestError, r"guidance_start: must not exceed"),
        ({"module": "canny", "model": "c", "image": IMAGE, "resize_mode": "Stretch"}, RequestError,
         r"resize_mode: unknown value 'Stretch'; valid: 'Crop and Resize'"),
        ({"module": "canny", "model": "c", "image": IMAGE, "weight": -1}, RequestError, r"weight"),
        ({"module": "canny", "model": "c", "image": {"image": IMAGE, "mask": MASK}}, UnsupportedError,
         r"\.mask: a mask is used only by inpaint modules"),
        ({"module": "canny", "model": "c", "image": [{"image": IMAGE}, {"image": IMAGE}]}, UnsupportedError,
         r"\.image: several images are taken by IP-Adapter units only, or with input_mode \"merge\""),
        ({"module": "canny", "model": "c", "image": IMAGE, "advanced_weighting": [1.0] * 13}, UnsupportedError,
         r"advanced_weighting"),
    ],
)
def test_bad_units_name_the_field(unit, error, message):
    with pytest.raises(error, match=message):
        _parse(unit)


def test_merge_mode_splits_a_controlnet_unit_per_image_at_a_share_of_the_weight():
    """sd-webui-controlnet `unfold_merged`: input_mode "merge" makes one unit per image, each at weight / images,
    each its own infotext entry; an IP-Adapter unit stays one (its images are averaged)."""
    from engine.control.units import infotext_params

    blue = _png_base64((10, 20, 200))
    units = _parse({"module": "canny", "model": "c", "weight": 0.9, "input_mode": "merge",
                    "image": [{"image": IMAGE}, {"image": blue}, {"image": IMAGE}]})
    assert [unit.weight for unit in units] == pytest.approx([0.3, 0.3, 0.3])
    assert [unit.image.getpixel((0, 0)) for unit in units] == [(200, 30, 60), (10, 20, 200), (200, 30, 60)]
    assert list(infotext_params(units)) == ["ControlNet 0", "ControlNet 1", "ControlNet 2"]
    (prompt,) = _parse({"module": "ip-adapter_clip_sd15", "model": "ip-adapter_sd15", "input_mode": "merge",
                        "image": [{"image": IMAGE}, {"image": blue}]})
    assert prompt.weight == 1.0 and len(prompt.extra_images) == 1


def test_instant_id_controlnet_needs_the_embedding_unit():
    with pytest.raises(RequestError, match=r"args\[0\]\.model: an InstantID ControlNet needs"):
        _parse(KEYPOINT_UNIT)
    with pytest.raises(UnsupportedError, match=r"args\[1\]\.module: only one face-embedding"):
        _parse(EMBEDDING_UNIT, EMBEDDING_UNIT, KEYPOINT_UNIT)


def test_module_lookup_accepts_forge_names_and_any_case():
    assert find_module("InsightFace (InstantID)", "m").name == "instant_id_face_embedding"
    assert find_module("None", "m").name == "none"
    assert find_module("CANNY", "m").name == "canny"


def test_module_list_shape():
    body = module_list(None, {})
    # sd-webui-controlnet's order: "none", ip-adapter-auto (priority 1000), then priority 100 by label
    # descending, then the rest.
    assert body["module_list"][:6] == ["none", "ip-adapter-auto", "tile_resample", "pidinet", "oneformer_ade20k",
                                       "pidinet_scribble"]  # labels softedge_pidinet > seg_ofade20k > scribble_…
    assert "oneformer_coco" in body["module_list"]
    assert body["module_list"].index("canny") < body["module_list"].index("invert")
    canny = body["module_detail"]["canny"]
    assert canny["model_free"] is False
    assert canny["sliders"] == [
        {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
        {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
        {"name": "High Threshold", "value": 200, "min": 1, "max": 255, "step": 1},
    ]
    # "none" keeps the default resolution slider; invert and inpaint hide it.
    assert [s["name"] for s in body["module_detail"]["none"]["sliders"]] == ["Resolution"]
    assert body["module_detail"]["invert"]["sliders"] == []
    assert set(body["module_detail"]) == set(MODULES)


def test_module_list_with_alias_names_uses_the_labels():
    body = module_list(None, {"alias_names": "true"})
    assert "depth_midas" in body["module_list"] and "depth" not in body["module_list"]
    assert {"seg_ofade20k", "seg_ofcoco"} <= set(body["module_list"])
    assert "inpaint_global_harmonious" in body["module_detail"]
    assert body["module_detail"]["mlsd"]["sliders"][1] == {"name": "MLSD Value Threshold", "value": 0.1,
                                                           "min": 0.01, "max": 2.0, "step": 0.01}


def test_model_list_titles_with_a1111_short_hash(tmp_path):
    import hashlib

    folder = tmp_path / "ControlNet"
    folder.mkdir()
    data = bytes(range(256)) * 5000  # > 0x110000 bytes, so the hashed window is not empty
    (folder / "control_v11p_sd15_canny.safetensors").write_bytes(data)
    expected = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    body = model_list(ModelCatalog(tmp_path), {"update": "true"})
    assert body == {"model_list": [f"control_v11p_sd15_canny [{expected}]"]}
