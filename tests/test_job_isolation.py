"""A job's result depends only on its payload: not on the thread that runs it, not on what ran before (an
ADetailer request's thread count), not on a refused request (options unchanged), not on calls that arrive
while it runs (one queue for every entry point)."""

import threading

import numpy as np
import pytest
import torch

from engine import Engine
from engine.errors import NotFoundError
from engine.server import create_app, serve_in_background


PAYLOAD = {
    "prompt": "a lighthouse",
    "seed": 11,
    "steps": 2,
    "width": 64,
    "height": 64,
    "sampler_name": "Euler",
}
ADETAILER = {
    **PAYLOAD,
    # The random tiny YOLO finds boxes only at a tiny confidence.
    "alwayson_scripts": {
        "ADetailer": {"args": [True, False, {"ad_model": "face_yolov8n.pt", "ad_confidence": 0.001}]}
    },
}


@pytest.fixture
def engine(demo_models):
    return Engine.from_models_dir(demo_models, device="cpu", default_checkpoint="tiny-sd15")


def on_new_thread(work):
    """`work()` on a thread started now (torch gives it the process's current default thread count)."""
    results = []
    thread = threading.Thread(target=lambda: results.append(work()))
    thread.start()
    thread.join()
    assert results, "the thread failed"
    return results[0]


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0])


def test_pixels_do_not_depend_on_the_thread_or_on_an_adetailer_request_before(engine):
    # Another count on a fresh thread: ultralytics' CPU predict sets min(8, cores - 1), the conftest two.
    engine_threads = torch.get_num_threads()  # the engine was built on this thread: its count
    expected = pixels(engine.txt2img(PAYLOAD))
    assert np.array_equal(pixels(on_new_thread(lambda: engine.txt2img(PAYLOAD))), expected)
    # The ADetailer request runs on its own thread, as the HTTP server's worker threads do.
    on_new_thread(lambda: engine.txt2img(ADETAILER))
    assert torch.get_num_threads() == engine_threads
    assert np.array_equal(pixels(on_new_thread(lambda: engine.txt2img(PAYLOAD))), expected)
    assert np.array_equal(pixels(engine.txt2img(PAYLOAD)), expected)
    with serve_in_background(create_app(engine)) as url:
        import base64
        import io

        import httpx
        from PIL import Image

        body = httpx.post(f"{url}/sdapi/v1/txt2img", json=PAYLOAD, timeout=120).json()
        served = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).convert("RGB"))
    assert np.array_equal(served, expected)


def test_a_thread_count_set_elsewhere_does_not_reach_a_job(engine):
    expected = pixels(engine.txt2img(PAYLOAD))
    other = 1 if torch.get_num_threads() != 1 else 2
    previous = torch.get_num_threads()
    torch.set_num_threads(other)  # as a third-party library would, on this thread and for threads after it
    try:
        assert np.array_equal(pixels(on_new_thread(lambda: engine.txt2img(PAYLOAD))), expected)
        assert np.array_equal(pixels(engine.txt2img(PAYLOAD)), expected)
    finally:
        torch.set_num_threads(previous)


def test_a_refused_request_changes_no_option(engine):
    before = engine.handle("GET", "sdapi/v1/options", {})
    refused = {
        **PAYLOAD,
        "enable_hr": True,
        "denoising_strength": 0.5,
        "hr_upscaler": "no such upscaler",
        "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "tiny-sdxl"},
        "override_settings_restore_afterwards": False,
    }
    with pytest.raises(NotFoundError, match="hr_upscaler"):
        engine.handle("POST", "sdapi/v1/txt2img", refused)
    assert engine.handle("GET", "sdapi/v1/options", {}) == before
    # The same overrides on a request that succeeds are kept, as A1111 keeps them.
    engine.handle("POST", "sdapi/v1/txt2img", {**refused, "enable_hr": False, "hr_upscaler": None})
    after = engine.handle("GET", "sdapi/v1/options", {})
    assert after["CLIP_stop_at_last_layers"] == 2 and after["sd_model_checkpoint"].startswith("tiny-sdxl")


class HeldJob:
    """A library txt2img on its own thread, held at its first step until `release()`."""

    def __init__(self, engine: Engine, payload: dict):
        self.started, self._release, self.results = threading.Event(), threading.Event(), []

        def hold(progress) -> None:
            self.started.set()
            assert self._release.wait(60)

        self.thread = threading.Thread(target=lambda: self.results.append(engine.txt2img(payload, hold)))
        self.thread.start()
        assert self.started.wait(120)

    def release(self):
        self._release.set()
        self.thread.join()
        return self.results[0]


@pytest.mark.parametrize(
    ("method", "endpoint", "payload"),
    [
        ("POST", "sdapi/v1/options", {"CLIP_stop_at_last_layers": 2}),
        ("POST", "sdapi/v1/refresh-loras", {}),
    ],
)
def test_calls_that_change_state_wait_for_the_running_library_job(engine, method, endpoint, payload):
    held = HeldJob(engine, PAYLOAD)
    done = threading.Event()
    caller = threading.Thread(target=lambda: (engine.handle(method, endpoint, payload), done.set()))
    caller.start()
    try:
        assert not done.wait(1.0), f"{method} /{endpoint} ran while a generation held the queue"
        assert engine.handle("GET", "sdapi/v1/progress", {})["state"]["job"] == "scripts_txt2img"
    finally:
        result = held.release()
        caller.join()
    assert done.is_set()
    assert "Clip skip" not in result.infotexts[0]  # the running job kept the options it started with
