"""The RunPod door's worker features: throttled progress, bucket uploads, the result size limit, and asking
for a fresh worker after a device failure (checked against the SDK's own job runner)."""

import asyncio
import io
import logging
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import handler
from engine import Engine
from engine.imaging.png import read_infotext


SMALL = {"prompt": "a heron", "seed": 4, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler"}


def job(payload, endpoint="/sdapi/v1/txt2img"):
    return {"id": "job-1", "input": {"api": {"method": "POST", "endpoint": endpoint}, "payload": payload}}


@pytest.fixture(scope="module")
def engine(demo_models):
    engine = Engine.from_models_dir(demo_models, device="cpu", default_checkpoint="tiny-sd15")
    return engine


@pytest.mark.parametrize(("interval", "expected_steps"), [(0.0, [1, 2]), (3600.0, [1])])
def test_progress_updates_are_throttled(engine, monkeypatch, interval, expected_steps):
    monkeypatch.setattr(handler, "PROGRESS_INTERVAL_S", interval)
    sent = []
    output = handler.serve_job(job(SMALL), engine, report_progress=lambda j, p: sent.append((j["id"], p)))
    assert len(output["images"]) == 1
    assert [update["step"] for _, update in sent] == expected_steps
    assert sent[0] == ("job-1", {"stage": "base", "batch": 1, "batches": 1, "step": 1, "steps": 2})


def test_bucket_uploads_replace_base64_by_urls(engine):
    stored = {}

    def upload(job_id, path):
        stored[path.name] = path.read_bytes()
        return f"https://bucket.example/{job_id}/{path.name}"

    output = handler.serve_job(job({**SMALL, "batch_size": 2}), engine, upload=upload)
    assert output["images"] == ["https://bucket.example/job-1/00.png", "https://bucket.example/job-1/01.png"]
    assert Image.open(io.BytesIO(stored["01.png"])).size == (64, 64)
    assert read_infotext(stored["01.png"]).startswith("a heron")


def test_a_result_over_the_size_limit_is_a_clear_error(engine):
    listing = {"id": "job-2", "input": {"api": {"method": "GET", "endpoint": "/sdapi/v1/samplers"}}}
    output = handler.serve_job(listing, engine, max_output_bytes=200)
    assert set(output) == {"error"}
    assert "over RunPod's" in output["error"] and "BUCKET_ENDPOINT_URL" in output["error"]


@pytest.mark.parametrize(
    ("failure", "device_usable", "refresh"),
    [
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True, True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False, True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True, False),
        (ValueError("something else"), True, False),
    ],
)
def test_device_failures_ask_runpod_for_a_fresh_worker(monkeypatch, failure, device_usable, refresh):
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(handler, "_device_usable", lambda: device_usable)
    broken = SimpleNamespace(handle=fail)  # the engine call is not under test, the mapping of its failure is
    # The SDK's own job runner turns the returned dict into the job result RunPod receives.
    from runpod.serverless.modules.rp_job import run_job

    result = asyncio.run(run_job(lambda j: handler.serve_job(j, broken), job(SMALL)))
    if refresh:  # a device failure names its kind; anything else is an internal error, its text logged only
        assert type(failure).__name__ in result["error"] and "device error" in result["error"]
    else:
        assert "internal error" in result["error"] and str(failure) not in result["error"]
    assert result.get("stopPod", False) is refresh


def test_hooks_follow_the_environment():
    from runpod.serverless import progress_update

    assert handler.runpod_hooks({}) == {"report_progress": handler.log_progress}  # local modes: to the log
    assert handler.runpod_hooks({"RUNPOD_WEBHOOK_POST_OUTPUT": "https://api.runpod.ai/x"}) == {
        "report_progress": progress_update
    }
    with pytest.raises(ValueError, match="BUCKET_SECRET_ACCESS_KEY"):
        handler.runpod_hooks({"BUCKET_ENDPOINT_URL": "https://s3.example", "BUCKET_ACCESS_KEY_ID": "id"})
    hooks = handler.runpod_hooks(
        {
            "BUCKET_ENDPOINT_URL": "https://s3.example",
            "BUCKET_ACCESS_KEY_ID": "id",
            "BUCKET_SECRET_ACCESS_KEY": "k",
        }
    )
    assert set(hooks) == {"upload", "report_progress"}


def test_local_runs_log_their_progress(demo_models, monkeypatch, caplog):
    """`python handler.py --test_input …` runs with the local hooks: progress shows in the log."""
    engine = Engine.from_models_dir(demo_models, device="cpu", default_checkpoint="tiny-sd15")
    with caplog.at_level(logging.INFO, logger="handler"):
        output = handler.serve_job(job(SMALL), engine, **handler.runpod_hooks({}))
    assert "images" in output
    assert any("base pass, batch 1/1, step 1/" in record.getMessage() for record in caplog.records)
