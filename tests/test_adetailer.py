"""ADetailer on the tiny models: the seed payload, A1111's inpaint step counts, pixels outside the mask kept."""

import json

import numpy as np
import pytest

from engine.detailer.masks import prepare_masks
from engine.imaging.inpaint import blur_mask, create_binary_mask
from tests.seeds import seed_payload


SMALL = {"prompt": "a portrait", "negative_prompt": "blurry", "seed": 21, "steps": 6, "width": 64, "height": 64,
         "sampler_name": "Euler"}


def unit(**overrides):
    # Random-weight YOLO scores every box near 0.01: a tiny confidence and k=1 give exactly one mask.
    return {"ad_model": "face_yolov8n.pt", "ad_confidence": 0.001, "ad_mask_k": 1, "ad_dilate_erode": 4,
            "ad_mask_blur": 4, "ad_denoising_strength": 0.5, "ad_inpaint_only_masked_padding": 8, **overrides}


def with_adetailer(payload, *units):
    return {**payload, "alwayson_scripts": {"ADetailer": {"args": [True, False, *units]}}}


def calls_by_stage(engine, payload):
    counts = {}

    def count(progress):
        counts[progress.stage] = counts.get(progress.stage, 0) + 1

    return engine.txt2img(payload, on_progress=count), counts


def test_seed_000_payload_runs_on_the_tiny_models(sd15_engine):
    payload = {**seed_payload("000_343685f6abe1ed79.txt"), "seed": 3, "steps": 4, "width": 64, "height": 64}
    result = sd15_engine.txt2img(payload)
    info = json.loads(result.info)
    assert result.images[0].size == (64, 64)
    assert "ADetailer model: face_yolov8n.pt" in info["infotexts"][0]
    assert "ADetailer version: 25.3.0" in info["infotexts"][0]


def test_one_face_costs_a1111s_inpaint_steps(sd15_engine):
    result, calls = calls_by_stage(sd15_engine, with_adetailer(SMALL, unit(ad_use_steps=True, ad_steps=8)))
    # A1111 img2img: int(0.5 × 8) + 1 = 5 steps for the mask (Euler: one model call per step).
    assert calls == {"base": 6, "adetailer": 5}
    assert result.unet_calls == 11


def test_dpmpp_sde_face_costs_2n_minus_1(sd15_engine):
    payload = with_adetailer({**SMALL, "sampler_name": "DPM++ SDE", "scheduler": "karras"}, unit())
    _, calls = calls_by_stage(sd15_engine, payload)
    assert calls == {"base": 2 * 6 - 1, "adetailer": 2 * (int(0.5 * 6) + 1) - 1}


def test_pixels_outside_the_blurred_mask_are_unchanged(sd15_engine):
    plain = np.asarray(sd15_engine.txt2img(SMALL).images[0]).astype(int)
    detailed = np.asarray(sd15_engine.txt2img(with_adetailer(SMALL, unit())).images[0]).astype(int)
    found = sd15_engine.detectors.get(sd15_engine.catalog.find_file("adetailer", "face_yolov8n.pt").path).detect(
        sd15_engine.txt2img(SMALL).images[0], 0.001
    )
    from engine.detailer.args import parse_unit

    (mask,) = prepare_masks(found, parse_unit(unit()).mask_options())
    outside = np.asarray(blur_mask(create_binary_mask(mask), 4)) == 0
    assert outside.any() and (~outside).any()
    assert np.array_equal(plain[outside], detailed[outside])
    assert not np.array_equal(plain, detailed)


def test_nothing_detected_leaves_the_image_and_says_so(sd15_engine):
    plain = sd15_engine.txt2img(SMALL).images[0]
    result = sd15_engine.txt2img(with_adetailer(SMALL, unit(ad_confidence=0.99)))
    assert result.images[0].tobytes() == plain.tobytes()
    assert any("found nothing" in warning for warning in result.warnings)


def test_second_unit_gets_ordinal_infotext_and_runs_after_the_first(sd15_engine):
    payload = with_adetailer(SMALL, unit(), unit(ad_model="person_yolov8n-seg.pt", ad_denoising_strength=0.3))
    result, calls = calls_by_stage(sd15_engine, payload)
    infotext = json.loads(result.info)["infotexts"][0]
    assert "ADetailer model 2nd: person_yolov8n-seg.pt" in infotext
    assert calls["adetailer"] == (int(0.5 * 6) + 1) + (int(0.3 * 6) + 1)


@pytest.mark.parametrize(("change", "field"), [
    ({"ad_model": "nope.pt"}, "ad_model"),
    ({"ad_bogus": 1}, "ad_bogus"),
])
def test_invalid_units_are_errors_naming_the_key(sd15_engine, change, field):
    from engine.errors import RequestError

    with pytest.raises(RequestError, match=field):
        sd15_engine.txt2img(with_adetailer(SMALL, unit(**change)))
