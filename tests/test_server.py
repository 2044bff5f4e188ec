"""The HTTP door on a real uvicorn: A1111's routes, error bodies, progress while a job runs, queueing."""

import base64
import io
import json
import threading
import time

import httpx
import pytest
from PIL import ExifTags, Image

from engine import Engine
from engine.server import create_app, serve_in_background
from engine.translate.common import SUPPORTED_SCRIPTS


SMALL = {"prompt": "a red fox", "seed": 9, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler"}
A1111_ERROR_KEYS = {"error", "detail", "body", "errors"}


@pytest.fixture(scope="module")
def client(demo_models):
    engine = Engine.from_models_dir(demo_models, device="cpu", default_checkpoint="tiny-sd15")
    with serve_in_background(create_app(engine)) as url, httpx.Client(base_url=url, timeout=120) as http:
        yield http


def test_unknown_endpoint_lists_the_supported_ones(client):
    response = client.get("/sdapi/v1/unknown-thing")
    assert response.status_code == 404
    body = response.json()
    assert set(body) == A1111_ERROR_KEYS
    assert body["detail"].startswith("path: /sdapi/v1/unknown-thing is not supported")
    assert "POST /sdapi/v1/txt2img" in body["detail"]
    assert "api." not in body["detail"]  # the envelope's words mean nothing on plain HTTP
    wrong = client.get("/sdapi/v1/txt2img")
    assert wrong.status_code == 405 and wrong.json()["detail"].startswith("method: /sdapi/v1/txt2img accepts POST")


def test_malformed_body_gets_fastapis_422_as_in_a1111(client):
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": "many"})
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "steps"]


def test_engine_errors_use_a1111_error_bodies(client):
    unknown = client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Euler z"})
    assert unknown.status_code == 404
    body = unknown.json()
    assert (
        set(body) == A1111_ERROR_KEYS
        and body["detail"].startswith("sampler_name:")
        and "Euler a" in body["detail"]
    )
    refused = client.post("/sdapi/v1/txt2img", json={**SMALL, "width": 100000})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("width:")


def test_listings_have_a1111_shapes(client):
    scripts = client.get("/sdapi/v1/scripts").json()
    assert set(SUPPORTED_SCRIPTS) <= set(scripts["txt2img"]) and "adetailer" in scripts["txt2img"]
    assert "x/y/z plot" in scripts["txt2img"] and "sd upscale" in scripts["img2img"]
    assert client.get("/adetailer/v1/ad_model").json()["ad_model"] == [
        "face_yolov8n.pt",
        "person_yolov8n-seg.pt",
    ]
    memory = client.get("/sdapi/v1/memory").json()
    assert memory["ram"]["used"] > 0 and memory["cuda"] == {"error": "unavailable"}
    assert {"Latent", "Latent (nearest-exact)"} <= {
        m["name"] for m in client.get("/sdapi/v1/latent-upscale-modes").json()
    }
    assert client.post("/sdapi/v1/refresh-checkpoints").json() is None
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_task"] is None


def test_progress_answers_while_a_job_runs_and_interrupt_stops_it(client):
    outcome = {}
    job = threading.Thread(
        target=lambda: outcome.update(response=client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 150}))
    )
    job.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress = client.get("/sdapi/v1/progress").json()
        if progress["state"]["sampling_step"] > 0:
            break
        time.sleep(0.02)
    assert progress["state"]["job_count"] == 1 and progress["state"]["sampling_steps"] == 150
    assert 0 < progress["progress"] < 1 and progress["current_task"].startswith("task(")
    assert client.post("/sdapi/v1/interrupt").json() == {}
    job.join(timeout=60)
    # As A1111: the job stops at its next step and returns the image it has.
    response = outcome["response"]
    assert response.status_code == 200
    body = response.json()
    assert len(body["images"]) == 1 and body["warnings"] == [
        "interrupted by POST /sdapi/v1/interrupt: the images of batch 1 of 1 are unfinished"
    ]
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_skip_ends_the_current_batch_and_the_job_goes_on(client):
    outcome = {}
    payload = {**SMALL, "steps": 150, "n_iter": 2}
    job = threading.Thread(target=lambda: outcome.update(response=client.post("/sdapi/v1/txt2img", json=payload)))
    job.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] == 0:
        time.sleep(0.02)
    assert client.post("/sdapi/v1/skip").json() is None  # A1111's answer
    state = client.get("/sdapi/v1/progress").json()["state"]
    assert state["skipped"] is True or state["job_no"] == 1  # flagged, or already on the next batch
    # The second batch runs whole: interrupt it too, so the test stays short.
    while time.monotonic() < deadline and client.get("/sdapi/v1/progress").json()["state"]["job_no"] == 0:
        time.sleep(0.02)
    client.post("/sdapi/v1/interrupt")
    job.join(timeout=60)
    body = outcome["response"].json()
    assert len(body["images"]) == 2
    assert body["warnings"][0] == "skipped by POST /sdapi/v1/skip: the images of batch 1 of 2 are unfinished"
    assert body["warnings"][1].startswith("interrupted by POST /sdapi/v1/interrupt: the images of batch 2 of 2")


def test_concurrent_requests_are_queued_and_match_a_lone_request(client):
    expected = client.post("/sdapi/v1/txt2img", json=SMALL).json()["images"]
    responses = []
    threads = [
        threading.Thread(target=lambda: responses.append(client.post("/sdapi/v1/txt2img", json=SMALL)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [r.status_code for r in responses] == [200, 200]
    assert all(r.json()["images"] == expected for r in responses)


def test_samples_format_override_gives_jpeg_with_the_infotext_in_exif(client):
    body = client.post(
        "/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"samples_format": "jpg"}}
    ).json()
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert image.format == "JPEG"
    comment = image.getexif().get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
    # EXIF UserComment: the 8-byte "UNICODE" code, then UTF-16BE text (piexif's layout, which A1111 writes).
    assert (
        comment[:8] == b"UNICODE\x00"
        and comment[8:].decode("utf-16-be") == json.loads(body["info"])["infotexts"][0]
    )
    # The override applied to that request only.
    assert client.get("/sdapi/v1/options").json()["samples_format"] == "png"


def test_override_settings_persist_only_without_restore_afterwards(client):
    client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"CLIP_stop_at_last_layers": 3}})
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
    kept = {
        **SMALL,
        "override_settings": {"CLIP_stop_at_last_layers": 3},
        "override_settings_restore_afterwards": False,
    }
    try:
        client.post("/sdapi/v1/txt2img", json=kept)
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 3
        info = json.loads(client.post("/sdapi/v1/txt2img", json=SMALL).json()["info"])
        assert info["clip_skip"] == 3
    finally:
        client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})
