"""Interrupt, skip and the job timeout behave as A1111's `shared.state` flags: the job stops at its next model
call and returns the images made so far (the pass under way ends with its latest denoised estimate), through
the library, the RunPod handler and the HTTP server (tests/test_server.py)."""

import base64
import io
import itertools
import json
import threading
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

import handler
from engine.wire.routes import JobState


# Euler: a run cut after its first model call ends with that call's denoised estimate, which is exactly where a
# one-step Euler run ends (its only step goes from σmax to 0), so the one-step image is the reference.
SMALL = {
    "prompt": "a red fox",
    "negative_prompt": "blurry",
    "seed": 11,
    "steps": 20,
    "width": 64,
    "height": 64,
    "sampler_name": "Euler",
    "cfg_scale": 5,
}
INTERRUPT = ("POST", "/sdapi/v1/interrupt", {})
SKIP = ("POST", "/sdapi/v1/skip", {})


class Pause:
    """An `on_progress` that holds the job after one model call until the test thread lets it go, so a stop
    request sent from the test thread lands at a known step."""

    def __init__(self, iteration: int = 0, stage: str = "base", call: int = 0):
        self.at = (iteration, stage, call)
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, progress) -> None:
        if (progress.iteration, progress.stage, progress.call) == self.at:
            self.reached.set()
            assert self.release.wait(120)


def stopped(run, pause: Pause, send_stop):
    """Run `run()` in another thread, send the stop request when it pauses, return what `run` returned."""
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=run()))
    thread.start()
    try:
        assert pause.reached.wait(120), "the job never reached the pause"
        send_stop()
    finally:
        pause.release.set()
        thread.join(120)
    assert "result" in outcome, "the job failed (see the thread's traceback above)"
    return outcome["result"]


def pixels(image) -> np.ndarray:
    if isinstance(image, str):
        image = Image.open(io.BytesIO(base64.b64decode(image)))
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_close(image, reference) -> None:
    # The cut run's latent and the one-step run's agree to float rounding (x + (denoised − x) vs denoised).
    assert np.abs(pixels(image) - pixels(reference)).max() <= 1


@pytest.fixture(scope="module")
def one_step(sd15_engine):
    return sd15_engine.txt2img({**SMALL, "steps": 1}).images[0]


def test_interrupt_returns_the_image_made_so_far_and_the_next_job_is_whole(sd15_engine, one_step):
    engine = sd15_engine
    whole = engine.txt2img({**SMALL, "steps": 4})
    pause = Pause()
    result = stopped(lambda: engine.txt2img(SMALL, pause), pause, lambda: engine.handle(*INTERRUPT))
    assert result.unet_calls == 1 and len(result.images) == 1
    assert_close(result.images[0], one_step)
    assert result.warnings == ["interrupted by POST /sdapi/v1/interrupt: the images of batch 1 of 1 are unfinished"]
    # The flag belonged to that job: the next one runs to the end, the same as before.
    again = engine.txt2img({**SMALL, "steps": 4})
    assert again.unet_calls == 4 and again.warnings == []
    assert again.images[0].tobytes() == whole.images[0].tobytes()


def test_interrupt_ends_the_job_skip_only_the_current_batch(sd15_engine, one_step):
    """A1111: interrupt breaks the batch loop; skip is cleared when the next batch starts."""
    engine = sd15_engine
    payload = {**SMALL, "steps": 3, "n_iter": 2}
    whole = engine.txt2img(payload)
    pause = Pause()
    interrupted = stopped(lambda: engine.txt2img(payload, pause), pause, lambda: engine.handle(*INTERRUPT))
    assert len(interrupted.images) == 1 and interrupted.unet_calls == 1
    assert_close(interrupted.images[0], one_step)
    assert interrupted.warnings == [
        "interrupted by POST /sdapi/v1/interrupt: the images of batch 1 of 2 are unfinished",
        "interrupted by POST /sdapi/v1/interrupt: batch 2 of 2 was not generated",
    ]

    pause = Pause()
    body = stopped(lambda: engine.handle("POST", "/sdapi/v1/txt2img", payload, pause), pause,
                   lambda: engine.handle(*SKIP))
    first, second = body["images"]
    assert_close(first, one_step)
    assert (pixels(second) == pixels(whole.images[1])).all()  # the second batch ran whole
    assert body["warnings"] == ["skipped by POST /sdapi/v1/skip: the images of batch 1 of 2 are unfinished"]
    assert len(engine.txt2img(payload).images) == 2


def test_hires_fix_after_a_stop_in_the_first_pass(sd15_engine, one_step):
    """A1111 `sample_hr_pass`: after an interrupt the first-pass image is returned at its size; after a skip
    the latents are still upscaled and the second pass stops at once, so the image has the hires size."""
    engine = sd15_engine
    payload = {**SMALL, "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.5}
    pause = Pause()
    interrupted = stopped(lambda: engine.txt2img(payload, pause), pause, lambda: engine.handle(*INTERRUPT))
    assert interrupted.images[0].size == (64, 64) and interrupted.unet_calls == 1
    assert_close(interrupted.images[0], one_step)
    pause = Pause()
    skipped = stopped(lambda: engine.txt2img(payload, pause), pause, lambda: engine.handle(*SKIP))
    assert skipped.images[0].size == (128, 128) and skipped.unet_calls == 1


def test_adetailer_does_not_start_after_an_interrupt(sd15_engine, one_step):
    """ADetailer checks `state.interrupted or state.skipped` before each unit."""
    unit = {"ad_model": "face_yolov8n.pt", "ad_confidence": 0.01, "ad_steps": 2}
    payload = {**SMALL, "alwayson_scripts": {"ADetailer": {"args": [True, False, unit]}}}
    pause = Pause()
    result = stopped(lambda: sd15_engine.txt2img(payload, pause), pause, lambda: sd15_engine.handle(*INTERRUPT))
    assert result.unet_calls == 1
    assert_close(result.images[0], one_step)


def test_a_runpod_job_is_interrupted_by_another_job(sd15_engine, one_step):
    """An envelope calling /sdapi/v1/interrupt stops the job another thread is serving (the SDK itself runs a
    synchronous handler one job at a time; programs embedding `serve_job` may not)."""
    engine = sd15_engine
    pause = Pause()
    job = {"id": "slow", "input": {"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"}, "payload": SMALL}}
    stop_job = {"id": "stop", "input": {"api": {"method": "POST", "endpoint": "/sdapi/v1/interrupt"}, "payload": {}}}

    def report(job, update) -> None:  # runpod.serverless.progress_update's signature
        pause(SimpleProgress(update))

    output = stopped(lambda: handler.serve_job(job, engine, report_progress=report), pause,
                     lambda: handler.serve_job(stop_job, engine))
    assert "error" not in output and len(output["images"]) == 1
    assert_close(output["images"][0], one_step)
    assert output["warnings"][0].startswith("interrupted by POST /sdapi/v1/interrupt")


def test_the_job_timeout_stops_a_job_as_an_interrupt_does(sd15_engine, one_step, monkeypatch):
    """JOB_TIMEOUT_S, measured on a clock the test moves: the first step takes "a minute"."""
    engine = sd15_engine
    now = [0.0]
    monkeypatch.setattr(engine, "jobs", JobState(clock=lambda: now[0]))
    monkeypatch.setattr(engine, "settings", replace(engine.settings, job_timeout_s=60))
    job = {"id": "slow", "input": {"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"}, "payload": SMALL}}

    def minute_long_step(job, update) -> None:
        now[0] += 61

    output = handler.serve_job(job, engine, report_progress=minute_long_step)
    assert "error" not in output and len(output["images"]) == 1
    assert_close(output["images"][0], one_step)
    assert output["warnings"] == [
        "stopped by the job timeout (JOB_TIMEOUT_S=60 s): the images of batch 1 of 1 are unfinished"
    ]
    # A deadline already past when the first batch would start (loading took too long): no image, as an
    # interrupt during A1111's model load gives none.
    ticks = itertools.count(step=100)  # every reading of this clock is 100 s later
    monkeypatch.setattr(engine, "jobs", JobState(clock=lambda: float(next(ticks))))
    output = handler.serve_job(job, engine)
    assert output["images"] == [] and output["warnings"] == [
        "stopped by the job timeout (JOB_TIMEOUT_S=60 s): batch 1 of 1 was not generated"
    ]
    assert json.loads(output["info"])["infotexts"] == []


class SimpleProgress:
    """The handler's progress update (1-based, a dict) as the `Progress` fields `Pause` compares."""

    def __init__(self, update: dict):
        self.iteration, self.stage, self.call = update["batch"] - 1, update["stage"], update["step"] - 1


def test_job_timeout_is_read_from_the_environment():
    from engine.settings import Settings

    assert Settings.from_env({"JOB_TIMEOUT_S": "90"}).job_timeout_s == 90.0
    assert Settings.from_env({}).job_timeout_s is None
    for bad in ("soon", "0", "-5"):
        with pytest.raises(ValueError, match="JOB_TIMEOUT_S"):
            Settings.from_env({"JOB_TIMEOUT_S": bad})
