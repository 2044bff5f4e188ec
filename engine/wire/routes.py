"""The endpoint table both doors (RunPod envelope, HTTP server) dispatch through, and A1111's job state."""

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from engine.errors import NotFoundError, RequestError
from engine.stopping import Deadline, StopSignal
from engine.wire.img2img import Img2ImgRequest
from engine.wire.txt2img import GenerationRequest, Txt2ImgRequest


logger = logging.getLogger(__name__)

# endpoint (no leading slash) → {HTTP method: handler name}. Generation endpoints are served by the Engine
# method of that name (their request models are in GENERATION_REQUESTS); the others by `engine.listings`.
ROUTES: dict[str, dict[str, str]] = {
    "sdapi/v1/txt2img": {"POST": "txt2img"},
    "sdapi/v1/img2img": {"POST": "img2img"},
    "sdapi/v1/extra-single-image": {"POST": "extra_single_image"},
    "sdapi/v1/png-info": {"POST": "png_info"},
    "sdapi/v1/progress": {"GET": "progress"},
    "sdapi/v1/interrupt": {"POST": "interrupt"},
    "sdapi/v1/skip": {"POST": "skip"},
    "sdapi/v1/options": {"GET": "options", "POST": "set_options"},
    "sdapi/v1/samplers": {"GET": "samplers"},
    "sdapi/v1/schedulers": {"GET": "schedulers"},
    "sdapi/v1/upscalers": {"GET": "upscalers"},
    "sdapi/v1/latent-upscale-modes": {"GET": "latent_upscale_modes"},
    "sdapi/v1/sd-models": {"GET": "sd_models"},
    "sdapi/v1/sd-vae": {"GET": "sd_vae"},
    "sdapi/v1/face-restorers": {"GET": "face_restorers"},
    "sdapi/v1/realesrgan-models": {"GET": "realesrgan_models"},
    "sdapi/v1/prompt-styles": {"GET": "prompt_styles"},
    "sdapi/v1/embeddings": {"GET": "embeddings"},
    "sdapi/v1/refresh-embeddings": {"POST": "refresh_embeddings"},
    "sdapi/v1/refresh-checkpoints": {"POST": "refresh_checkpoints"},
    "sdapi/v1/refresh-vae": {"POST": "refresh_vae"},
    "sdapi/v1/loras": {"GET": "loras"},
    "sdapi/v1/refresh-loras": {"POST": "refresh_loras"},
    "sdapi/v1/memory": {"GET": "memory"},
    "sdapi/v1/scripts": {"GET": "scripts"},
    "sdapi/v1/script-info": {"GET": "script_info"},
    "sdapi/v1/cmd-flags": {"GET": "cmd_flags"},
    "sdapi/v1/hypernetworks": {"GET": "hypernetworks"},
    "adetailer/v1/ad_model": {"GET": "ad_model"},
    "controlnet/model_list": {"GET": "controlnet_model_list"},
    "controlnet/module_list": {"GET": "controlnet_module_list"},
    "controlnet/detect": {"POST": "controlnet_detect"},
    "reactor/models": {"GET": "reactor_models"},
    "reactor/upscalers": {"GET": "reactor_upscalers"},
    "reactor/facemodels": {"GET": "reactor_facemodels", "POST": "reactor_facemodels_build"},
    "reactor/image": {"POST": "reactor_image"},
}
# Request model of each generation endpoint (the HTTP server also declares them, for A1111's 422 errors).
GENERATION_REQUESTS: dict[str, type[GenerationRequest]] = {
    "txt2img": Txt2ImgRequest,
    "img2img": Img2ImgRequest,
}
# Endpoints that use the GPU, swap models or change what a generation reads: queued behind generation, as
# A1111's `queue_lock` does (its POST /options is not queued; here a running job never sees options change).
QUEUED = {
    "set_options",
    "controlnet_detect",
    "extra_single_image",
    "refresh_checkpoints",
    "refresh_vae",
    "refresh_loras",
    "refresh_embeddings",
}


@dataclass(frozen=True)
class RouteFields:
    """What the door calls the method and the endpoint, so a routing error names what the client sent."""

    method: str
    endpoint: str


# The library names them as its arguments; the RunPod envelope and HTTP doors as their clients write them.
LIBRARY_FIELDS = RouteFields("method", "endpoint")
ENVELOPE_FIELDS = RouteFields("input.api.method", "input.api.endpoint")
HTTP_FIELDS = RouteFields("method", "path")


def route(method: str, endpoint: str, fields: RouteFields = LIBRARY_FIELDS) -> str:
    """The handler name serving `method endpoint`, or an error listing what is served."""
    endpoint = endpoint.strip("/")
    methods = ROUTES.get(endpoint)
    if methods is None:
        raise NotFoundError(
            fields.endpoint, f"/{endpoint} is not supported; supported: {', '.join(supported())}"
        )
    if method.upper() not in methods:
        raise RequestError(fields.method, f"/{endpoint} accepts {' or '.join(methods)}, got {method!r}")
    return methods[method.upper()]


def supported() -> list[str]:
    """Every served call as "METHOD /path"."""
    return [f"{method} /{path}" for path, table in ROUTES.items() for method in table]


def dispatch(engine, method: str, endpoint: str, payload: dict[str, Any], on_progress=None) -> Any:
    """Serve one A1111 API call on `engine` and return its JSON-able response body (None for A1111's null).

    Args:
        engine: the `Engine`; its `options` (OptionsStore) and `jobs` (JobState) hold the A1111 state.
        on_progress: called with each `Progress` of a generation, after the job state is updated.
    """
    from engine import listings  # deferred: listings reach into torch-backed parts, this table is pure

    name = route(method, endpoint)
    if name in GENERATION_REQUESTS:
        return _generate(engine, name, payload, on_progress)
    serve = getattr(listings, name)
    if name not in QUEUED:
        return serve(engine, payload)
    return engine.exclusively(serve, engine, payload)


def _generate(engine, name: str, payload: dict[str, Any], on_progress) -> dict[str, Any]:
    request = GENERATION_REQUESTS[name].parse(payload)
    encoding = engine.options.encoding(request.override_settings)
    # The engine queues the job and registers it in `engine.jobs` (progress, interrupt, skip) once it runs.
    result = getattr(engine, name)(request, on_progress)
    # In the format the options (or this request's override_settings) ask for.
    return result.response(send_images=request.send_images is not False, encoding=encoding)


@dataclass
class _Job:
    name: str
    task_id: str
    passes: int
    started: float
    timestamp: str
    job_no: int = 0
    job_count: int = 1
    sampling_step: int = 0
    sampling_steps: int = 0


@dataclass(frozen=True)
class RunningJob:
    """What a running generation gets from `JobState.running`: its stop signal and its progress recorder."""

    stop: StopSignal
    record: Callable[[Any], None]

    def reporter(self, on_progress: Callable[[Any], None] | None) -> Callable[[Any], None]:
        """Records each `Progress` for `GET /progress`, then passes it on to `on_progress`."""

        def report(progress) -> None:
            self.record(progress)
            if on_progress is not None:
                on_progress(progress)

        return report


class JobState:
    """A1111's `shared.state` as the API shows it: the job running now (`GET /progress`), its interrupt and
    skip flags (`engine.stopping`), and the queue that runs GPU jobs one at a time. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        """`clock` measures job timeouts (seconds; tests pass their own)."""
        # Re-entrant: a script's generations run inside the request that holds it.
        self.queue = threading.RLock()
        self._lock = threading.Lock()
        self._clock = clock
        self._job: _Job | None = None
        self._stop: StopSignal | None = None

    @contextlib.contextmanager
    def running(
        self, name: str, task_id: str | None, passes: int, timeout_s: float | None = None
    ) -> Iterator[RunningJob]:
        """Mark a generation as running, with fresh stop flags (A1111's `state.begin`) and, with `timeout_s`,
        a deadline that interrupts it."""
        job = _Job(
            name,
            task_id or f"task({uuid.uuid4().hex[:15]})",
            passes,
            time.time(),
            time.strftime("%Y%m%d%H%M%S"),
        )
        stop = StopSignal(Deadline.after(timeout_s, self._clock), self._clock)
        with self._lock:
            self._job, self._stop = job, stop
        try:
            yield RunningJob(stop, self._record)
        finally:
            with self._lock:
                self._job, self._stop = None, None

    def _record(self, progress) -> None:
        with self._lock:
            job = self._job
            if job is not None:
                # A1111 counts the base and hires passes of each batch as separate jobs; detailing belongs to
                # the last pass.
                job.job_count = progress.iterations * job.passes
                job.job_no = progress.iteration * job.passes + (1 if progress.stage == "hires" else 0)
                job.sampling_step, job.sampling_steps = progress.call + 1, progress.total or 0

    def interrupt(self) -> None:
        """Stop the running job at its next model call, keeping its images so far (no effect when idle)."""
        with self._lock:
            if self._job is not None:
                self._stop.interrupt()
                logger.info("interrupting %s", self._job.task_id)

    def skip(self) -> None:
        """End the running job's current batch at its next model call (no effect when idle)."""
        with self._lock:
            if self._job is not None:
                self._stop.skip()
                logger.info("skipping the current batch of %s", self._job.task_id)

    def progress(self) -> dict[str, Any]:
        """`GET /sdapi/v1/progress` (A1111 `progressapi`): progress 0..1, eta_relative (s), the state."""
        with self._lock:
            job, stop = self._job, self._stop
            if job is None:
                state = {
                    "skipped": False,
                    "interrupted": False,
                    "stopping_generation": False,
                    "job": "",
                    "job_count": 0,
                    "job_timestamp": "0",
                    "job_no": 0,
                    "sampling_step": 0,
                    "sampling_steps": 0,
                }
                return {
                    "progress": 0.0,
                    "eta_relative": 0.0,
                    "state": state,
                    "current_image": None,
                    "textinfo": None,
                    "current_task": None,
                }
            # A1111's formula: 0.01 so the ETA never divides by zero, plus finished jobs and this job's steps.
            fraction = 0.01 + job.job_no / job.job_count
            if job.sampling_steps > 0:
                fraction += job.sampling_step / job.sampling_steps / job.job_count
            elapsed = time.time() - job.started
            state = {
                "skipped": stop.skipped,
                "interrupted": stop.interrupted,
                "stopping_generation": False,
                "job": f"scripts_{job.name}",
                "job_count": job.job_count,
                "job_timestamp": job.timestamp,
                "job_no": job.job_no,
                "sampling_step": job.sampling_step,
                "sampling_steps": job.sampling_steps,
            }
            return {
                "progress": min(fraction, 1.0),
                "eta_relative": elapsed / fraction - elapsed,
                "state": state,
                "current_image": None,
                "textinfo": None,
                "current_task": job.task_id,
            }


# A tiny request through the whole path (parse, plan, sampler, UNet, VAE, PNG), so imports and first-call
# costs (allocator, kernels, PIL plugins) are paid at start-up and not by the first client.
WARM_UP_PAYLOAD = {
    "prompt": "warm-up",
    "negative_prompt": "",
    "seed": 1,
    "steps": 2,
    "width": 64,
    "height": 64,
    "sampler_name": "Euler a",
}


def warm_up(engine, ad_models: tuple[str, ...] = ()) -> None:
    """Load the default (and PRELOAD) checkpoints and the named ADetailer detectors, then generate once.

    Raises:
        EngineError: a named checkpoint or detector does not exist (a worker must not start half-configured).
    """
    from PIL import Image

    started = time.perf_counter()
    engine.warm_up()
    for name in ad_models:
        detector = engine.detectors.for_model(engine.catalog, name, field="PRELOAD_ADETAILER")
        detector.detect(Image.new("RGB", (64, 64)), 0.3)  # ultralytics fuses layers on the first call
    if engine.default_checkpoint() is None:
        logger.warning("no checkpoint in %s: nothing to warm up", engine.catalog.root)
        return
    engine.handle("POST", "sdapi/v1/txt2img", dict(WARM_UP_PAYLOAD))
    logger.info("warmed up in %.1f s", time.perf_counter() - started)
