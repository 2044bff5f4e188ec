"""`Engine`: the library door. Owns the models and serves A1111 API calls one generation at a time."""

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.control.models import ControlModels
from engine.detailer.detect import DetectorCache
from engine.errors import RequestError
from engine.faceswap.models import FaceSwapModels
from engine.generate import Progress
from engine.generation_job import plan_request, run_generation
from engine.imaging.vae_tiling import VaeTiling
from engine.options import OptionsStore
from engine.plan_models import resolve_models
from engine.prompts.embeddings import EmbeddingDatabase
from engine.prompts.styles import StyleDatabase, styles_file_candidates
from engine.resources.cache import PipelineCache, estimate_checkpoint_bytes, resolve_budget
from engine.resources.catalog import ModelCatalog
from engine.resources.entries import CheckpointEntry
from engine.resources.loader import Precision, load_pipeline
from engine.resources.model_files import load_listed
from engine.resources.trusted_pickles import TrustedPickles
from engine.resources.vae import ExternalVaes
from engine.restore.registry import FaceRestorers
from engine.result import GenerationResult, request_parameters
from engine.sampling.step_cache import ShallowPath
from engine.scripts import ScriptContext, run_script
from engine.settings import Settings
from engine.threads import use_torch_threads
from engine.upscale.registry import Upscalers
from engine.wire.img2img import Img2ImgRequest
from engine.wire.routes import JobState, dispatch
from engine.wire.scripts import selectable_script
from engine.wire.txt2img import Txt2ImgRequest


logger = logging.getLogger(__name__)

# The field a checkpoint is named by in errors (hires and ADetailer checkpoints load through the same cache).
CHECKPOINT_FIELD = "sd_model_checkpoint"

__all__ = ["Engine", "GenerationResult"]


class Engine:
    """Built once from settings; `handle()` serves any routed A1111 call, `txt2img()` the main one.

    Thread-safe: every call that generates, uses a model or changes options runs through `exclusively`, one at
    a time, in arrival order as the lock grants it; listings, progress, interrupt and skip answer meanwhile.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        # Fixed for the engine's life and set on each job's thread: pixels depend on it (engine.threads).
        self.torch_threads = settings.torch_threads or torch.get_num_threads()
        use_torch_threads(self.torch_threads)
        self.catalog = ModelCatalog(settings.models_dir)
        self.precision = Precision.for_device(settings.device)
        # The most recently used checkpoints stay resident within a memory budget, identical components shared.
        self._pipelines = PipelineCache(
            self._load,
            budget_bytes=resolve_budget(settings.model_memory_budget_gb, self.precision.device),
            estimate=self._estimate,
        )
        self.options = OptionsStore(
            self.catalog, self.default_checkpoint, worker_defaults=settings.speedups.option_defaults()
        )
        self.jobs = JobState()
        self.upscalers = Upscalers(self.catalog, self.precision.device, self.precision.dtype)
        self.detectors = DetectorCache(
            device=str(self.precision.device),
            catalog=self.catalog,
            trusted=TrustedPickles(settings.trusted_pickles, settings.models_dir),
        )
        self.restorers = FaceRestorers(self.catalog, self.precision.device)
        self.face_swap = FaceSwapModels(self.catalog, self.precision.device)
        self.embeddings = EmbeddingDatabase(self.catalog)
        self.vaes = ExternalVaes(self.catalog, settings.config_roots, self.precision)
        self.styles = StyleDatabase(styles_file_candidates(settings.models_dir, settings.styles_file))
        self.control_models = ControlModels(
            settings.models_dir,
            settings.config_roots,
            self.precision.device,
            self.precision.dtype,
            catalog=self.catalog,
            prepare=settings.speedups.prepare_denoiser,
        )

    @classmethod
    def from_models_dir(cls, models_dir: str | Path, **settings: Any) -> "Engine":
        return cls(Settings(models_dir=Path(models_dir), **settings))

    # --- doors -----------------------------------------------------------------------------------------

    def handle(self, method: str, endpoint: str, payload: dict[str, Any], on_progress=None) -> Any:
        """Serve one A1111 API call and return its JSON-able response body."""
        return dispatch(self, method, endpoint, payload, on_progress)

    def txt2img(
        self, payload: dict[str, Any] | Txt2ImgRequest, on_progress: Callable[[Progress], None] | None = None
    ) -> GenerationResult:
        """`/sdapi/v1/txt2img`: a payload dict (or parsed request) in, images and A1111's info out."""
        request = payload if isinstance(payload, Txt2ImgRequest) else Txt2ImgRequest.parse(payload)
        return self.exclusively(self._serve, request, on_progress)

    def img2img(
        self, payload: dict[str, Any] | Img2ImgRequest, on_progress: Callable[[Progress], None] | None = None
    ) -> GenerationResult:
        """`/sdapi/v1/img2img`: img2img and inpainting, same response shape as txt2img."""
        request = payload if isinstance(payload, Img2ImgRequest) else Img2ImgRequest.parse(payload)
        return self.exclusively(self._serve, request, on_progress)

    def exclusively(self, work: Callable[..., Any], *args: Any) -> Any:
        """`work(*args)` alone: the one place the engine's queue (A1111's `queue_lock`) is taken, by the
        library's calls and by `handle` for every endpoint that uses a model or changes options."""
        with self.jobs.queue:
            use_torch_threads(self.torch_threads)
            return work(*args)

    def _serve(self, request: Txt2ImgRequest | Img2ImgRequest, on_progress) -> GenerationResult:
        """A request's selectable script (`script_name`), which runs its own generations, or one generation.

        A1111 keeps a request's `override_settings` when `override_settings_restore_afterwards` is false; they
        are checked first and stored only once the whole request has succeeded."""
        kept = self.options.overrides_to_keep(
            request.override_settings, request.override_settings_restore_afterwards
        )
        img2img = isinstance(request, Img2ImgRequest)
        script = selectable_script(request.script_name, img2img)
        if script is None:
            result = self.generate_request(request, on_progress)
        else:
            context = ScriptContext(
                request, img2img, self.generate_request, self.upscalers, on_progress, check=self.check_request,
                settings=self.settings,
            )
            result = run_script(script, context)
            result.parameters = request_parameters(request)
        self.options.apply(kept)
        return result

    def generate_request(
        self, request: Txt2ImgRequest | Img2ImgRequest, on_progress=None, seeds: list[int] | None = None
    ) -> GenerationResult:
        """One generation for a parsed request, its script ignored; `seeds` (one per image) replace the ones
        the request's `seed` gives (scripts that seed each image themselves, as A1111's take a seed list).
        Re-entrant: scripts call it within their request's turn."""
        return self.exclusively(self._generate_one, request, on_progress, seeds)

    def _generate_one(self, request, on_progress, seeds: list[int] | None) -> GenerationResult:
        name = "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"
        result = run_generation(self, name, request, plan_request(self, request, seeds), on_progress)
        result.parameters = request_parameters(request)
        return result

    def check_request(self, request: Txt2ImgRequest | Img2ImgRequest) -> None:
        """Translate a request and resolve every model it names, without generating (RequestError if wrong)."""
        plan = plan_request(self, request)
        resolve_models(self, plan, self.resolve_checkpoint(plan.checkpoint))

    def warm_up(self) -> None:
        """Load the default checkpoint (and any `PRELOAD` ones) now rather than on the first request."""
        names = self.settings.preload or (
            (self.settings.default_checkpoint,) if self.settings.default_checkpoint else ()
        )
        entries = [self.catalog.find_checkpoint(name, field="PRELOAD") for name in names]
        if not entries and (default := self.default_checkpoint()) is not None:
            entries = [default]
        for entry in entries:
            self.exclusively(self._pipelines.get, entry)

    # --- models ----------------------------------------------------------------------------------------

    @property
    def pipelines(self) -> PipelineCache:
        """The resident checkpoints (loaded on first use)."""
        return self._pipelines

    def resolve_checkpoint(self, name: str | None) -> CheckpointEntry:
        if name:
            return self.catalog.find_checkpoint(name)
        default = self.default_checkpoint()
        if default is None:
            raise RequestError(
                "sd_model_checkpoint", f"no checkpoint in {self.settings.models_dir / 'Stable-diffusion'}"
            )
        return default

    def default_checkpoint(self) -> CheckpointEntry | None:
        if self.settings.default_checkpoint:
            return self.catalog.find_checkpoint(self.settings.default_checkpoint, field="DEFAULT_CHECKPOINT")
        checkpoints = sorted(self.catalog.checkpoints(), key=lambda entry: entry.name.lower())
        # Like A1111 with no configured model: the first checkpoint in name order.
        return checkpoints[0] if checkpoints else None

    def _estimate(self, entry: CheckpointEntry) -> int:
        # Reads the file's header: a damaged or vanished file fails here, before residents are evicted for it.
        return load_listed(
            self.catalog,
            entry.path,
            CHECKPOINT_FIELD,
            lambda: estimate_checkpoint_bytes(entry.path, self.precision.dtype),
        )

    def _load(self, entry: CheckpointEntry):
        started = time.perf_counter()
        pipeline = load_listed(
            self.catalog,
            entry.path,
            CHECKPOINT_FIELD,
            lambda: load_pipeline(entry.path, self.settings.config_roots, self.precision),
        )
        pipeline.vae_tiling = VaeTiling(above_pixels=self.settings.vae_tile_above_pixels)
        speedups = self.settings.speedups
        speedups.prepare_denoiser(pipeline.unet)
        if speedups.step_caching is not None:
            ShallowPath(pipeline.unet, speedups.step_caching.branch)  # a branch this UNet lacks fails at load
            pipeline.step_caching = speedups.step_caching
        if speedups.sdxl_vae_fp16_fix and pipeline.is_sdxl:
            fixed = self.vaes.fp16_fixed(entry, self.precision)
            pipeline = pipeline.with_vae(fixed) if fixed is not None else pipeline
        logger.info(
            "loaded %s in %.1f s on %s", entry.name, time.perf_counter() - started, self.precision.device
        )
        return pipeline
