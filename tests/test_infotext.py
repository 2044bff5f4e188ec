"""Infotext and `info` in A1111's format (`processing.create_infotext`, `Processed.js`)."""

import json

from engine.wire.info import VERSION, ImageRecord, InfotextFields, info_json, infotext


FIELDS = InfotextFields(
    steps=20,
    sampler="DPM++ SDE",
    schedule_type="Karras",
    cfg_scale=7,
    width=512,
    height=512,
    model_hash="abcdef0123",
    model_name="foo",
    extra={"Denoising strength": 0.5, "Hires upscale": 2, "Hires upscaler": "Latent"},
)


def test_key_order_matches_a1111_reference_example():
    text = infotext(FIELDS, ImageRecord("a cat", "", seed=1, subseed=5))
    assert text == (
        "a cat\nSteps: 20, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, "
        "Model hash: abcdef0123, Model: foo, Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent, "
        f"Version: {VERSION}"
    )


def test_negative_prompt_line_clip_skip_and_quoting():
    fields = InfotextFields(
        steps=4,
        sampler="Euler",
        schedule_type=None,
        cfg_scale=4.5,
        width=513,
        height=512,
        model_hash=None,
        model_name="m",
        clip_skip=2,
        extra={"Lora hashes": "a: 1, b: 2"},
    )
    text = infotext(fields, ImageRecord("p", "bad, ugly", seed=3, subseed=4))
    prompt, negative, settings = text.split("\n")
    assert negative == "Negative prompt: bad, ugly"
    assert "Size: 513x512" in settings  # A1111 prints the requested size, not the floored one
    assert "Clip skip: 2" in settings and "Model hash" not in settings and "Schedule type" not in settings
    assert 'Lora hashes: "a: 1, b: 2"' in settings


def test_variation_seed_only_with_strength():
    fields = InfotextFields(**{**FIELDS.__dict__, "subseed_strength": 0.3, "extra": {}})
    text = infotext(fields, ImageRecord("p", "", seed=3, subseed=77))
    assert "Variation seed: 77, Variation seed strength: 0.3" in text
    assert "Variation seed" not in infotext(FIELDS, ImageRecord("p", "", seed=3, subseed=77))


def test_info_is_a_json_string_with_a1111_keys():
    images = [ImageRecord("p", "n", seed=10 + i, subseed=20 + i) for i in range(2)]
    info = json.loads(info_json(FIELDS, images, styles=[], batch_size=2, job_timestamp="20260101000000"))
    required = {
        "prompt",
        "all_prompts",
        "negative_prompt",
        "seed",
        "all_seeds",
        "subseed",
        "all_subseeds",
        "width",
        "height",
        "sampler_name",
        "cfg_scale",
        "steps",
        "batch_size",
        "sd_model_name",
        "sd_model_hash",
        "clip_skip",
        "infotexts",
        "job_timestamp",
        "index_of_first_image",
    }
    assert required <= set(info)
    assert info["all_seeds"] == [10, 11] and info["sampler_name"] == "DPM++ SDE"
    assert info["infotexts"][1].split("\n")[0] == "p" and "Seed: 11" in info["infotexts"][1]
