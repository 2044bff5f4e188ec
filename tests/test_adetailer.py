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


def inside_and_outside(engine, image):
    """Where the unit's blurred mask is 0 and where it is not, on `image` (the base pass's result)."""
    from engine.detailer.args import parse_unit

    found = engine.detectors.get(engine.catalog.find_file("adetailer", "face_yolov8n.pt").path).detect(image, 0.001)
    (mask,) = prepare_masks(found, parse_unit(unit()).mask_options())
    outside = np.asarray(blur_mask(create_binary_mask(mask), 4)) == 0
    return ~outside, outside


def test_ad_vae_decodes_only_the_inpaint_pass_and_is_restored_after(sd15_engine):
    from engine.demo.models import DEMO_VAE

    plain = sd15_engine.txt2img(with_adetailer(SMALL, unit())).images[0]
    with_vae = sd15_engine.txt2img(with_adetailer(SMALL, unit(ad_use_vae=True, ad_vae=DEMO_VAE)))
    inside, outside = inside_and_outside(sd15_engine, sd15_engine.txt2img(SMALL).images[0])
    plain_pixels, vae_pixels = np.asarray(plain).astype(int), np.asarray(with_vae.images[0]).astype(int)
    # The base pass decodes with the checkpoint's own VAE: every pixel ADetailer leaves alone is the same.
    assert np.array_equal(plain_pixels[outside], vae_pixels[outside])
    assert not np.array_equal(plain_pixels[inside], vae_pixels[inside])
    assert any(key.path.name == DEMO_VAE for key in sd15_engine.vaes.resident())
    info = json.loads(with_vae.info)["infotexts"][0]
    assert f"ADetailer use separate VAE: True, ADetailer VAE: {DEMO_VAE}" in info
    assert "VAE hash" not in info  # the image's own VAE is still the baked-in one
    # Restored: the same request without ad_vae gives the earlier pixels again.
    assert sd15_engine.txt2img(with_adetailer(SMALL, unit())).images[0].tobytes() == plain.tobytes()


@pytest.mark.parametrize("change", [
    {"ad_use_vae": False, "ad_vae": "tiny-vae-sd15.safetensors"},  # the flag decides
    {"ad_use_vae": True, "ad_vae": "Use same VAE"},
    {"ad_use_vae": True, "ad_vae": "None"},  # ADetailer reads "None" as "use the same VAE"
    {"ad_use_vae": True, "ad_vae": "Automatic"},  # no VAE file is named after tiny-sd15: its own VAE
])
def test_ad_vae_values_that_keep_the_generations_vae(sd15_engine, change):
    plain = sd15_engine.txt2img(with_adetailer(SMALL, unit())).images[0]
    assert sd15_engine.txt2img(with_adetailer(SMALL, unit(**change))).images[0].tobytes() == plain.tobytes()


def test_unknown_ad_vae_is_an_error_naming_the_unit_field(sd15_engine):
    from engine.errors import NotFoundError

    with pytest.raises(NotFoundError, match=r"^alwayson_scripts\.ADetailer\.args\[2\]\.ad_vae: .*tiny-vae-sd15"):
        sd15_engine.txt2img(with_adetailer(SMALL, unit(ad_use_vae=True, ad_vae="missing.safetensors")))
