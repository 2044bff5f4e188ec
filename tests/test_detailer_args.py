"""ADetailer arguments: the seed payload, legacy forms, coercion, errors naming the key, infotext keys."""


import pytest

from engine.detailer.args import ADetailerUnit, parse_adetailer_args, parse_unit
from engine.detailer.infotext import ADETAILER_VERSION, INFOTEXT_LABELS, label_suffix, ordinal
from engine.errors import RequestError, UnsupportedError
from tests import seeds as seed_payloads


def seed_payload() -> dict:
    return seed_payloads.seed_payload("000_343685f6abe1ed79.txt")


def one_unit(**values) -> dict:
    return {"ADetailer": {"args": [True, False, {"ad_model": "face_yolov8n.pt", **values}]}}


def infotext_line(params: dict) -> str:
    return ", ".join(f"{key}: {value}" for key, value in params.items())


def test_seed_payload_parses_with_its_legacy_top_k_key():
    parsed = parse_adetailer_args(seed_payload()["alwayson_scripts"])

    assert parsed.enabled and not parsed.skip_img2img
    [(position, unit)] = parsed.active_units
    assert position == 0
    assert parsed.field(position, "ad_model") == "alwayson_scripts.ADetailer.args[2].ad_model"
    assert unit.ad_model == "face_yolov8n.pt"
    assert unit.ad_mask_k == 0 and unit.ad_mask_filter_method == "Area"
    assert (unit.ad_dilate_erode, unit.ad_inpaint_only_masked_padding, unit.ad_steps) == (32, 0, 28)
    assert unit.ad_use_steps and unit.ad_sampler == "DPM++ SDE Karras" and not unit.ad_use_sampler


def test_seed_payload_infotext_matches_adetailer():
    # The infotext ADetailer 25.3.0 writes for its own example payload (reference/adetailer.md §1.4).
    expected = ("ADetailer model: face_yolov8n.pt, ADetailer confidence: 0.3, ADetailer dilate erode: 32, "
                "ADetailer mask blur: 4, ADetailer denoising strength: 0.4, ADetailer inpaint only masked: True, "
                "ADetailer inpaint padding: 0, ADetailer use separate steps: True, ADetailer steps: 28, "
                "ADetailer version: 25.3.0")

    assert infotext_line(parse_adetailer_args(seed_payload()["alwayson_scripts"]).infotext_params()) == expected


@pytest.mark.parametrize("key", ["ADetailer", "adetailer", "ADETAILER"])
def test_script_key_is_matched_case_insensitively(key):
    parsed = parse_adetailer_args({key: {"args": [True, False, {"ad_model": "face_yolov8n.pt"}]}})

    assert parsed.is_active


def test_the_same_script_twice_is_an_error():
    with pytest.raises(RequestError, match="twice"):
        parse_adetailer_args({"ADetailer": {"args": []}, "adetailer": {"args": []}})


def test_defaults_are_adetailers():
    unit = ADetailerUnit()

    assert (unit.ad_model, unit.ad_confidence, unit.ad_dilate_erode, unit.ad_mask_blur) == ("None", 0.3, 4, 4)
    assert (unit.ad_denoising_strength, unit.ad_inpaint_only_masked_padding, unit.ad_steps) == (0.4, 32, 28)
    assert (unit.ad_sampler, unit.ad_scheduler, unit.ad_noise_multiplier) == (
        "DPM++ 2M Karras", "Use same scheduler", 1.0)
    assert len([key for key in ADetailerUnit.model_fields if key.startswith("ad_")]) == 42


def test_legacy_form_without_leading_bools_is_enabled():
    parsed = parse_adetailer_args({"ADetailer": {"args": [{"ad_model": "face_yolov8n.pt"},
                                                          {"ad_model": "hand_yolov8n.pt"}]}})

    assert parsed.enabled
    assert [unit.ad_model for _, unit in parsed.active_units] == ["face_yolov8n.pt", "hand_yolov8n.pt"]


@pytest.mark.parametrize(("legacy", "value", "key", "expected"), [
    ("ad_mask_k_largest", 2, "ad_mask_k", 2),
    ("ad_conf", 30, "ad_confidence", 0.3),  # an integer was a percentage before v23.6.0
    ("ad_conf", "45", "ad_confidence", 0.45),
    ("ad_conf", 0.25, "ad_confidence", 0.25),
    ("ad_inpaint_full_res", False, "ad_inpaint_only_masked", False),
    ("ad_inpaint_full_res_padding", 16, "ad_inpaint_only_masked_padding", 16),
    ("ad_tap_enable", False, "ad_tab_enable", False),
])
def test_legacy_keys_are_renamed(legacy, value, key, expected):
    unit = parse_unit({"ad_model": "face_yolov8n.pt", legacy: value})

    assert getattr(unit, key) == pytest.approx(expected)


def test_legacy_and_new_key_with_different_values_is_an_error():
    with pytest.raises(RequestError) as caught:
        parse_adetailer_args(one_unit(ad_mask_k_largest=1, ad_mask_k=3))

    assert caught.value.field == "alwayson_scripts.ADetailer.args[2].ad_mask_k_largest"
    assert parse_unit({"ad_mask_k_largest": 2, "ad_mask_k": 2}).ad_mask_k == 2


@pytest.mark.parametrize(("key", "sent", "expected"), [
    ("ad_confidence", "0.5", 0.5),
    ("ad_inpaint_only_masked", "no", False),
    ("ad_use_steps", "yes", True),
    ("ad_use_steps", 1, True),
    ("ad_dilate_erode", 4.7, 4),  # pydantic v1 truncated floats for int fields
    ("ad_dilate_erode", -4.7, -4),
    ("ad_steps", "20", 20),
    ("ad_cfg_scale", 7, 7.0),
    ("ad_prompt", 5, "5"),
])
def test_values_are_coerced_loosely_as_adetailer_does(key, sent, expected):
    value = getattr(parse_unit({key: sent}), key)

    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(("key", "value"), [
    ("ad_confidence", 1.5),
    ("ad_mask_k", -1),
    ("ad_inpaint_width", 0),
    ("ad_clip_skip", 13),
    ("ad_noise_multiplier", 0.4),
    ("ad_mask_filter_method", "area"),
    ("ad_mask_merge_invert", "merge"),
    ("ad_prompt", None),
    ("ad_steps", "many"),
    ("ad_confidence", float("nan")),
])
def test_an_invalid_value_is_an_error_naming_the_key(key, value):
    with pytest.raises(RequestError) as caught:
        parse_adetailer_args(one_unit(**{key: value}))

    assert caught.value.field == f"alwayson_scripts.ADetailer.args[2].{key}"


def test_an_unknown_key_is_an_error_listing_the_valid_ones():
    with pytest.raises(RequestError) as caught:
        parse_adetailer_args({"adetailer": {"args": [True, False, {"ad_model": "a.pt"}, {"ad_inpaint_padding": 8}]}})

    assert caught.value.field == "alwayson_scripts.adetailer.args[3].ad_inpaint_padding"
    assert "'ad_inpaint_only_masked_padding'" in caught.value.message


@pytest.mark.parametrize(("values", "key"), [
    ({"ad_model": "yolov8x-worldv2.pt", "ad_model_classes": "person,cat"}, "ad_model_classes"),
])
def test_unsupported_features_of_an_active_unit_are_errors(values, key):
    with pytest.raises(UnsupportedError) as caught:
        parse_adetailer_args(one_unit(**values))

    assert caught.value.field.endswith(f".{key}")


def test_a_skipped_unit_may_ask_for_anything_valid():
    parsed = parse_adetailer_args({"ADetailer": {"args": [
        True, False, {"ad_model": "None", "ad_restore_face": True},
        {"ad_model": "face_yolov8n.pt", "ad_tab_enable": False, "ad_controlnet_model": "cn"}]}})

    assert parsed.enabled and not parsed.is_active and parsed.infotext_params() == {}


@pytest.mark.parametrize("script", [
    {"args": [False, False, {"ad_model": "face_yolov8n.pt", "bogus": 1}]},  # A1111 never reads a disabled unit
    {"args": []},
    {"args": [True, False]},
    {},  # no "args": A1111 keeps the script's defaults, where ADetailer is off
])
def test_disabled_forms(script):
    parsed = parse_adetailer_args({"ADetailer": script})

    assert not parsed.is_active and parsed.active_units == () and parsed.infotext_params() == {}


def test_no_adetailer_entry_is_disabled():
    assert not parse_adetailer_args({"controlnet": {"args": []}}).is_active
    assert not parse_adetailer_args(None).is_active


@pytest.mark.parametrize(("script", "field"), [
    ({"args": {"ad_model": "face_yolov8n.pt"}}, "alwayson_scripts.ADetailer.args"),
    ({"args": ["false", {"ad_model": "face_yolov8n.pt"}]}, "alwayson_scripts.ADetailer.args[0]"),
    ({"args": [True, False, {"ad_model": "a.pt"}, None]}, "alwayson_scripts.ADetailer.args[3]"),
    ({"args": [True, False] + [{"ad_model": "a.pt"}] * 5}, "alwayson_scripts.ADetailer.args"),
    ([True, False], "alwayson_scripts.ADetailer"),
])
def test_malformed_args_are_errors(script, field):
    with pytest.raises(RequestError) as caught:
        parse_adetailer_args({"ADetailer": script})

    assert caught.value.field == field


def test_skip_img2img_is_the_second_bool():
    assert parse_adetailer_args({"ADetailer": {"args": [True, True, {"ad_model": "a.pt"}]}}).skip_img2img
    assert not parse_adetailer_args({"ADetailer": {"args": [True, {"ad_model": "a.pt"}]}}).skip_img2img


@pytest.mark.parametrize(("n", "text"), [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"),
                                         (12, "12th"), (13, "13th"), (21, "21st"), (22, "22nd"), (111, "111th")])
def test_ordinals(n, text):
    assert ordinal(n) == text


def test_later_units_get_ordinal_suffixes_counting_skipped_units():
    parsed = parse_adetailer_args({"ADetailer": {"args": [
        True, False, {"ad_model": "None"}, {"ad_model": "face_yolov8n.pt"}, {"ad_model": "hand_yolov8n.pt"}]}})

    params = parsed.infotext_params()

    assert "ADetailer model" not in params
    assert parsed.field(2, "ad_model") == "alwayson_scripts.ADetailer.args[4].ad_model"
    assert params["ADetailer model 2nd"] == "face_yolov8n.pt"
    assert params["ADetailer model 3rd"] == "hand_yolov8n.pt"
    assert params["ADetailer confidence 3rd"] == 0.3
    assert list(params)[-1] == "ADetailer version" and params["ADetailer version"] == ADETAILER_VERSION
    assert [label_suffix(n) for n in range(4)] == ["", " 2nd", " 3rd", " 4th"]


def test_non_default_values_appear_in_adetailer_label_order():
    unit = parse_unit({
        "ad_model": "face_yolov8n.pt", "ad_prompt": "a face", "ad_mask_k": 2, "ad_mask_filter_method": "Confidence",
        "ad_mask_min_ratio": 0.01, "ad_y_offset": -3, "ad_mask_merge_invert": "Merge",
        "ad_inpaint_only_masked": False, "ad_inpaint_only_masked_padding": 64, "ad_use_sampler": True,
        "ad_sampler": "Euler a", "ad_use_clip_skip": True, "ad_clip_skip": 2})

    params = unit.infotext_params()

    assert list(params) == [
        "ADetailer model", "ADetailer prompt", "ADetailer confidence", "ADetailer method to decide top k masks",
        "ADetailer mask only top k", "ADetailer mask min ratio", "ADetailer y offset", "ADetailer dilate erode",
        "ADetailer mask merge invert", "ADetailer mask blur", "ADetailer denoising strength",
        "ADetailer inpaint only masked", "ADetailer use separate sampler", "ADetailer sampler",
        "ADetailer use separate CLIP skip", "ADetailer CLIP skip"]
    assert params["ADetailer inpaint only masked"] is False  # shown; only its padding is dropped
    assert params["ADetailer method to decide top k masks"] == "Confidence"


def test_controlnet_keys_are_dropped_only_at_their_defaults():
    params = ADetailerUnit(ad_model="a.pt", ad_controlnet_model="cn", ad_controlnet_weight=0.5).infotext_params()

    assert params["ADetailer ControlNet model"] == "cn" and params["ADetailer ControlNet weight"] == 0.5
    assert "ADetailer ControlNet module" not in params and "ADetailer ControlNet guidance end" not in params
    assert [label for _, label in INFOTEXT_LABELS][-1] == "ADetailer ControlNet guidance end"


def test_unit_helpers_follow_adetailer():
    unit = ADetailerUnit(ad_model="a.pt", ad_use_inpaint_width_height=True, ad_inpaint_width=768,
                         ad_use_steps=True, ad_steps=20)

    assert unit.processing_size(512, 640) == (768, 512)
    assert ADetailerUnit().processing_size(512, 640) == (512, 640)
    assert (unit.steps(30), ADetailerUnit().steps(30)) == (20, 30)
    assert (unit.cfg_scale(5.0), ADetailerUnit(ad_use_cfg_scale=True, ad_cfg_scale=9).cfg_scale(5.0)) == (5.0, 9.0)
    options = ADetailerUnit(ad_mask_k=3, ad_y_offset=2, ad_dilate_erode=-8).mask_options(sort_by="Area (large to small)")
    assert (options.top_k, options.y_offset, options.dilate_erode, options.sort_by) == (3, 2, -8, "Area (large to small)")
