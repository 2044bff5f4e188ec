"""RunPod serverless worker: the composition root that hands the engine to the RunPod SDK.

Importing this module builds nothing; the engine is built (its default checkpoint and ADetailer detectors
loaded, one tiny generation run) by `warm_up()` before `runpod.serverless.start`, so FlashBoot snapshots a
warm process.
"""

import base64
import functools
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from engine.startup import imports_without_collection


with imports_without_collection():
    from engine import Engine, Settings
    from engine.errors import EngineError, OutOfMemory, internal_error_message
    from engine.logs import setup_logging
    from engine.wire.envelope import parse_job_input
    from engine.wire.routes import ENVELOPE_FIELDS, route
    from engine.wire.routes import warm_up as warm_up_engine


logger = logging.getLogger("handler")

# RunPod refuses `/runsync` results above 20 MB; a larger one would fail after all the work was done.
MAX_OUTPUT_BYTES = 20_000_000
PROGRESS_INTERVAL_S = 2.0
# Messages of CUDA failures after which the device cannot be trusted: the worker is replaced.
DEVICE_FAILURES = (
    "CUDA error",
    "device-side assert",
    "illegal memory access",
    "cuDNN error",
    "CUBLAS_STATUS",
    "CUDA driver",
    "NCCL error",
    "unspecified launch failure",
)
# File name endings by the first bytes of an encoded image, for bucket uploads.
IMAGE_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"RIFF", ".webp"))


@functools.cache
def engine() -> Engine:
    return Engine(Settings.from_env())


def handler(job: dict[str, Any]) -> Any:
    """Serve one RunPod job with the SDK hooks the environment enables (progress on a real worker, bucket
    uploads with `BUCKET_ENDPOINT_URL`)."""
    return serve_job(job, engine(), **runpod_hooks(os.environ))


def serve_job(
    job: dict[str, Any],
    engine: Engine,
    report_progress: Callable[[dict, Any], None] | None = None,
    upload: Callable[[str, Path], str] | None = None,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
) -> Any:
    """Serve one RunPod job: an A1111 call in the envelope, or a bare txt2img payload.

    Args:
        job: the RunPod job (`{"id", "input"}`).
        report_progress: `runpod.serverless.progress_update`, called at most every PROGRESS_INTERVAL_S.
        upload: stores an image file and returns its URL (`rp_upload.upload_image`); images are then returned
            as URLs instead of base64.
        max_output_bytes: larger responses become an error that suggests the bucket.

    Returns:
        The A1111 response body, or `{"error": "<one line>"}` (the SDK marks the job FAILED and the worker
        serves the next job), with `"refresh_worker": True` when the GPU failed in a way that may last.
    """
    job_id = str(job.get("id", "local")) if isinstance(job, dict) else "local"
    try:
        call = parse_job_input(job.get("input") if isinstance(job, dict) else None)
        route(call.method, call.endpoint, ENVELOPE_FIELDS)  # a wrong endpoint is named as the envelope has it
        on_progress = _Throttled(job, report_progress) if report_progress else None
        output = engine.handle(call.method, call.endpoint, call.payload, on_progress)
        if upload is not None:
            output = _upload_images(output, job_id, upload)
        return _within_limit(output, max_output_bytes, uploading=upload is not None)
    except EngineError as exc:
        logger.info("job %s rejected: %s", job_id, exc)
        if isinstance(exc, OutOfMemory) and not _device_usable():
            return {"error": str(exc), "refresh_worker": True}
        return {"error": str(exc)}
    except Exception as exc:
        # The exception's text may hold internal paths and values: the client gets the job id, the log the rest.
        logger.exception("job %s failed", job_id)
        if is_device_failure(exc):
            return {"error": f"device error (job {job_id}): {type(exc).__name__}; this worker is being replaced",
                    "refresh_worker": True}
        return {"error": internal_error_message(job_id, "job")}


class _Throttled:
    """Sends a job's progress to RunPod (`/status` shows it while the job runs), at most once per interval."""

    def __init__(self, job: dict[str, Any], send: Callable[[dict, Any], None]):
        self.job, self.send = job, send
        self.last = float("-inf")

    def __call__(self, progress) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        self.send(
            self.job,
            {
                "stage": progress.stage,
                "batch": progress.iteration + 1,
                "batches": progress.iterations,
                "step": progress.call + 1,
                "steps": progress.total,
            },
        )


def is_device_failure(exc: BaseException) -> bool:
    """Whether `exc` may have left the GPU unusable: a CUDA/cuDNN error, or an out-of-memory error after which
    even a tiny allocation fails. Such a worker asks RunPod for a fresh one (`refresh_worker`)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return not _device_usable()
    return isinstance(exc, RuntimeError | torch.AcceleratorError) and any(
        m in str(exc) for m in DEVICE_FAILURES
    )


def _device_usable() -> bool:
    import torch

    if not torch.cuda.is_available():
        return True  # a CPU allocation failure leaves nothing broken
    try:
        torch.cuda.empty_cache()
        torch.ones(1, device="cuda").add_(1)
        torch.cuda.synchronize()
    except Exception:  # any failure of the probe means the device cannot be trusted
        return False
    return True


def _upload_images(output: Any, job_id: str, upload: Callable[[str, Path], str]) -> Any:
    """Replace base64 images (`images`, extras' `image`) by the URLs `upload` returns."""
    if not isinstance(output, dict) or not ({"images", "image"} & set(output)):
        return output
    output = dict(output)
    with tempfile.TemporaryDirectory(prefix=f"{job_id}-") as folder:

        def stored(index: int, text: str) -> str:
            data = base64.b64decode(text)
            extension = next((end for magic, end in IMAGE_MAGIC if data.startswith(magic)), ".bin")
            path = Path(folder, f"{index:02d}{extension}")
            path.write_bytes(data)
            return upload(job_id, path)

        if isinstance(output.get("images"), list):
            output["images"] = [stored(index, text) for index, text in enumerate(output["images"])]
        if isinstance(output.get("image"), str):
            output["image"] = stored(0, output["image"])
    return output


def _within_limit(output: Any, limit: int, uploading: bool) -> Any:
    size = len(json.dumps(output, ensure_ascii=False).encode())
    if size <= limit:
        return output
    advice = (
        "ask for fewer or smaller images"
        if uploading
        else "set BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY to receive image "
        "URLs, or ask for fewer or smaller images, or override_settings.samples_format 'jpg' or 'webp'"
    )
    return {
        "error": f"response: {size / 1e6:.1f} MB is over RunPod's {limit / 1e6:.0f} MB result limit; {advice}"
    }


def runpod_hooks(env: Mapping[str, str]) -> dict[str, Any]:
    """The SDK helpers this environment enables: progress updates on a real serverless worker (which has a
    job-status URL), uploads when a bucket is configured."""
    hooks: dict[str, Any] = {}
    if env.get("RUNPOD_WEBHOOK_POST_OUTPUT"):
        from runpod.serverless import progress_update

        hooks["report_progress"] = progress_update
    else:
        # The SDK's local modes (--test_input, test_input.json, --rp_serve_api) have no status to update:
        # the progress goes to the log, so a long local job does not look hung.
        hooks["report_progress"] = log_progress
    if env.get("BUCKET_ENDPOINT_URL"):
        missing = [key for key in ("BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY") if not env.get(key)]
        if missing:
            # Without credentials the SDK silently writes to a local folder and returns its path.
            raise ValueError(f"BUCKET_ENDPOINT_URL is set but {' and '.join(missing)} is not")
        from runpod.serverless.utils import rp_upload

        hooks["upload"] = lambda job_id, path: rp_upload.upload_image(job_id, str(path))
    return hooks


def log_progress(job: dict[str, Any], update: dict[str, Any]) -> None:
    """`report_progress` for local runs: one log line per throttled update."""
    logger.info(
        "job %s: %s pass, batch %d/%d, step %d/%s",
        job.get("id", "local"),
        update["stage"],
        update["batch"],
        update["batches"],
        update["step"],
        update["steps"] if update["steps"] is not None else "?",
    )


def warm_up() -> None:
    """Load the default checkpoint and the `PRELOAD_ADETAILER` detectors and generate once, before taking
    jobs, so the first request pays no load."""
    names = tuple(name.strip() for name in os.environ.get("PRELOAD_ADETAILER", "").split(",") if name.strip())
    warm_up_engine(engine(), ad_models=names)


if __name__ == "__main__":
    import runpod

    setup_logging()
    runpod_hooks(os.environ)  # a bucket without credentials fails here, before any job
    warm_up()
    runpod.serverless.start({"handler": handler})
