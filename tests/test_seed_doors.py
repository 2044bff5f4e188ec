"""The two seed payloads through the doors not covered elsewhere: the RunPod handler and the CLI."""

import base64
import io
import json

import pytest
from PIL import Image

import handler
from engine.cli import main
from tests.seeds import seed_job
from tests.test_instantid_e2e import seed_002


@pytest.fixture
def run(demo_models, monkeypatch):
    monkeypatch.setenv("MODELS_DIR", str(demo_models))
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.setenv("DEFAULT_CHECKPOINT", "tiny-sd15")
    handler.engine.cache_clear()
    yield lambda job: handler.handler({"id": "seed", **job})
    handler.engine.cache_clear()


def seed_000(width=64, height=64, steps=4) -> dict:
    job = seed_job("000_343685f6abe1ed79.txt")
    job["input"]["payload"].update(width=width, height=height, steps=steps, seed=11)
    return job


def test_seed_000_through_the_handler(run):
    output = run(seed_000())
    assert "error" not in output, output.get("error")
    image = Image.open(io.BytesIO(base64.b64decode(output["images"][0])))
    assert image.size == (64, 64)
    info = json.loads(output["info"])
    assert info["sampler_name"] == "DPM++ SDE" and "Schedule type: Karras" in info["infotexts"][0]
    assert "ADetailer model: face_yolov8n.pt" in info["infotexts"][0]


def test_seed_000_through_the_cli(demo_models, tmp_path):
    payload = tmp_path / "seed000.json"
    payload.write_text(json.dumps(seed_000()))
    out = tmp_path / "out"
    argv = ["--models", str(demo_models), "--device", "cpu", "generate", str(payload), "--out", str(out)]
    assert main(argv) == 0
    assert len(list(out.glob("*.png"))) == 1


def test_seed_002_through_the_cli(demo_models, tmp_path):
    payload = tmp_path / "seed002.json"
    payload.write_text(json.dumps(seed_002(64, 64, steps=2)))
    out = tmp_path / "out"
    argv = ["--models", str(demo_models), "--device", "cpu", "generate", str(payload), "--out", str(out)]
    assert main(argv) == 0
    assert len(list(out.glob("*.png"))) >= 1


def test_extension_listings_through_the_handler(run):
    def get(endpoint):
        return run({"input": {"api": {"method": "GET", "endpoint": endpoint}, "payload": {}}})

    models = get("/controlnet/model_list")["model_list"]
    assert any(name.startswith("control_v11p_sd15_canny [") for name in models)
    assert "canny" in get("/controlnet/module_list")["module_list"]
    assert "face_yolov8n.pt" in get("/adetailer/v1/ad_model")["ad_model"]
