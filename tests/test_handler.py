"""The RunPod door: handler(job) on the tiny demo models, good jobs and bad ones."""

import base64
import io
import json

import pytest
from PIL import Image

import handler
from engine.imaging.png import read_infotext


@pytest.fixture
def run(demo_models, monkeypatch):
    monkeypatch.setenv("MODELS_DIR", str(demo_models))
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.setenv("DEFAULT_CHECKPOINT", "tiny-sd15")
    handler.engine.cache_clear()
    yield lambda job_input: handler.handler({"id": "test", "input": job_input})
    handler.engine.cache_clear()


def envelope(payload, endpoint="/sdapi/v1/txt2img", method="POST"):
    return {"api": {"method": method, "endpoint": endpoint}, "payload": payload}


SMALL = {
    "prompt": "a (red:1.2) fox",
    "seed": 7,
    "steps": 3,
    "width": 64,
    "height": 72,
    "sampler_name": "Euler a",
}


def test_txt2img_envelope_returns_a1111_response(run):
    output = run(envelope({**SMALL, "batch_size": 2}))
    assert set(output) == {"images", "parameters", "info"}
    info = json.loads(output["info"])
    assert info["all_seeds"] == [7, 8] and info["sampler_name"] == "Euler a"
    assert output["parameters"]["steps"] == 3 and output["parameters"]["sampler_index"] == "Euler"
    image_bytes = base64.b64decode(output["images"][1])
    assert Image.open(io.BytesIO(image_bytes)).size == (64, 72)
    assert read_infotext(image_bytes) == info["infotexts"][1]


def test_bare_payload_and_same_seed_same_pixels(run):
    first = run(SMALL)["images"][0]
    assert run(envelope(SMALL))["images"][0] == first


@pytest.mark.parametrize(
    ("job_input", "field"),
    [
        ("nonsense", "input"),
        (envelope({**SMALL, "steps": 0}), "steps"),
        (envelope({**SMALL, "steps": "many"}), "steps"),
        (envelope({**SMALL, "width": 100000}), "width"),
        (envelope({**SMALL, "batch_size": 99}), "batch_size"),
        (envelope({**SMALL, "sampler_name": "Euler z"}), "sampler_name"),
        (envelope({**SMALL, "override_settings": {"sd_model_checkpoint": "nope"}}), "sd_model_checkpoint"),
        (envelope(SMALL, endpoint="/sdapi/v1/unknown"), "input.api.endpoint"),
        (envelope(SMALL, method="GET"), "input.api.method"),
        (
            envelope({**SMALL, "alwayson_scripts": {"ADetailer": {"args": [True, False, {"ad_x": 1}]}}}),
            "alwayson_scripts.ADetailer",
        ),
        (
            envelope({**SMALL, "alwayson_scripts": {"Regional Prompter": {"args": []}}}),
            "alwayson_scripts.Regional Prompter",
        ),
    ],
)
def test_bad_input_is_a_one_line_error_and_the_next_job_runs(run, job_input, field):
    output = run(job_input)
    assert set(output) == {"error"}
    assert output["error"].startswith(field) and "\n" not in output["error"]
    assert len(run(envelope(SMALL))["images"]) == 1


def test_unknown_checkpoint_error_lists_the_available_ones(run):
    output = run(envelope({**SMALL, "override_settings": {"sd_model_checkpoint": "nope"}}))
    assert "tiny-sd15" in output["error"] and "tiny-sdxl" in output["error"]


def test_unknown_fields_and_override_settings_are_reported(run):
    output = run(envelope({**SMALL, "hello": 1, "override_settings": {"some_option": True}}))
    assert output["warnings"] == [
        "ignored unknown field 'hello'",
        "ignored override_settings.some_option: not supported yet",
    ]


def test_listing_endpoints(run):
    models = run(envelope({}, endpoint="/sdapi/v1/sd-models", method="GET"))
    assert {"tiny-sd15", "tiny-sdxl"} <= {m["model_name"] for m in models}
    samplers = run(envelope({}, endpoint="sdapi/v1/samplers", method="GET"))
    assert "DPM++ SDE" in [s["name"] for s in samplers]
