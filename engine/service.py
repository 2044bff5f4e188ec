"""`Engine`: the library door. Owns the models and serves A1111 API calls one generation at a time."""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from engine.control.models import ControlModels
from engine.control.request import prepare_control
from engine.detailer.detect import DetectorCache
from engine.errors import RequestError
from engine.faceswap.models import FaceSwapModels
from engine.faceswap.run import prepare_stage
from engine.generate import GenerationOutput, Models, Progress, generate
from engine.imaging.png import PNG, ImageEncoding, encode_base64
from engine.imaging.vae_tiling import VaeTiling
from engine.memory import LOW_MEMORY_UNET_ROWS, LOW_MEMORY_VAE_TILING, run_with_memory_fallback
from engine.networks.session import LoraSession
from engine.options import OptionsStore
from engine.pipeline import INPAINTING_MASK_WEIGHT
from engine.plan import GenerationPlan
from engine.plan_models import load_models, resolve_models
from engine.prompts.embeddings import EmbeddingDatabase
from engine.prompts.styles import StyleDatabase, styles_file_candidates
from engine.resources.cache import PipelineCache, estimate_checkpoint_bytes, resolve_budget
from engine.resources.catalog import CheckpointEntry, ModelCatalog
from engine.resources.loader import Precision, load_pipeline
from engine.resources.model_files import load_listed
from engine.resources.vae import ExternalVaes, vae_infotext_fields
from engine.restore.registry import FaceRestorers
from engine.scripts import ScriptContext, run_script
from engine.seamless import circular_padding
from engine.settings import Settings
from engine.translate import to_img2img_plan, to_plan
from engine.upscale.registry import Upscalers
from engine.wire import info as infotexts
from engine.wire.img2img import Img2ImgRequest
from engine.wire.routes import JobState, RunningJob, dispatch
from engine.wire.scripts import selectable_script
from engine.wire.txt2img import Txt2ImgRequest


logger = logging.getLogger(__name__)

# The field a checkpoint is named by in errors (hires and ADetailer checkpoints load through the same cache).
CHECKPOINT_FIELD = "sd_model_checkpoint"


@dataclass
class GenerationResult:
    """Images plus what A1111 returns with them; `response()` is the A1111 JSON body."""

    images: list[Image.Image]
    infotexts: list[str]
    info: str  # a JSON string, as A1111 sends it
    parameters: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    unet_calls: int = 0
    restorer_calls: int = 0  # face restoration network calls (one per restored face)
    # ControlNet's detected maps: A1111 + ControlNet returns them after the results.
    detected_maps: list[Image.Image] = field(default_factory=list)
    # Stopped by an interrupt or the job timeout (a script stops there too, as A1111's `state.interrupted`).
    interrupted: bool = False

    def response(self, send_images: bool = True, encoding: ImageEncoding = PNG) -> dict[str, Any]:
        """A1111's body; images encoded as `encode_pil_to_base64` does, in `encoding`'s format, the infotext
        kept in each result, ControlNet's maps after the results (as A1111 + ControlNet returns them)."""
        images = []
        if send_images:
            pairs = zip(self.images, self.infotexts, strict=True)
            images = [encode_base64(image, text, encoding) for image, text in pairs]
            images += [encode_base64(image, None, encoding) for image in self.detected_maps]
        body: dict[str, Any] = {
            "images": images,
            "parameters": self.parameters,
            "info": self.info,
        }
        if self.warnings:
            body["warnings"] = self.warnings
        return body


class Engine:
    """Built once from settings; `handle()` serves any routed A1111 call, `txt2img()` the main one.

    Thread-safe: concurrent callers are served one generation at a time.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.catalog = ModelCatalog(settings.models_dir)
        self.precision = Precision.for_device(settings.device)
        # The most recently used checkpoints stay resident within a memory budget, identical components shared.
        self._pipelines = PipelineCache(
            self._load,
            budget_bytes=resolve_budget(settings.model_memory_budget_gb, self.precision.device),
            estimate=self._estimate,
        )
        self.options = OptionsStore(self.catalog, self.default_checkpoint)
        self.jobs = JobState()
        self.upscalers = Upscalers(self.catalog, self.precision.device, self.precision.dtype)
        self.detectors = DetectorCache(device=str(self.precision.device), catalog=self.catalog)
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
        self._generation_lock = threading.Lock()

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
        return self._serve(request, on_progress)

    def img2img(
        self, payload: dict[str, Any] | Img2ImgRequest, on_progress: Callable[[Progress], None] | None = None
    ) -> GenerationResult:
        """`/sdapi/v1/img2img`: img2img and inpainting, same response shape as txt2img."""
        request = payload if isinstance(payload, Img2ImgRequest) else Img2ImgRequest.parse(payload)
        return self._serve(request, on_progress)

    def _serve(self, request: Txt2ImgRequest | Img2ImgRequest, on_progress) -> GenerationResult:
        """A request's selectable script (`script_name`), which runs its own generations, or one generation."""
        img2img = isinstance(request, Img2ImgRequest)
        script = selectable_script(request.script_name, img2img)
        if script is None:
            return self.generate_request(request, on_progress)
        context = ScriptContext(
            request, img2img, self.generate_request, self.upscalers, on_progress, check=self.check_request
        )
        result = run_script(script, context)
        result.parameters = _parameters(request)
        return result

    def generate_request(
        self, request: Txt2ImgRequest | Img2ImgRequest, on_progress=None, seeds: list[int] | None = None
    ) -> GenerationResult:
        """One generation for a parsed request, its script ignored; `seeds` (one per image) replace the ones
        the request's `seed` gives (scripts that seed each image themselves, as A1111's take a seed list)."""
        name = "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"
        result = self._generate(name, request, self._plan(request, seeds), on_progress)
        result.parameters = _parameters(request)
        return result

    def check_request(self, request: Txt2ImgRequest | Img2ImgRequest) -> None:
        """Translate a request and resolve every model it names, without generating (RequestError if wrong)."""
        plan = self._plan(request)
        resolve_models(self, plan, self.resolve_checkpoint(plan.checkpoint))

    def _plan(self, request: Txt2ImgRequest | Img2ImgRequest, seeds: list[int] | None = None) -> GenerationPlan:
        defaults = self.options.for_request()
        if isinstance(request, Img2ImgRequest):
            plan = to_img2img_plan(request, self.settings, defaults=defaults, styles=self.styles)
        else:
            plan = to_plan(request, self.settings, defaults=defaults, styles=self.styles)
        if seeds is None:
            return plan
        if len(seeds) != plan.image_count:
            raise RequestError("seed", f"{len(seeds)} seeds for {plan.image_count} images")
        return replace(plan, noise=replace(plan.noise, seeds=tuple(int(seed) for seed in seeds)))

    def _generate(self, name: str, request, plan: GenerationPlan, on_progress) -> GenerationResult:
        # A1111 keeps a request's override_settings when override_settings_restore_afterwards is false.
        self.options.keep_overrides(request.override_settings, request.override_settings_restore_afterwards)
        # Resolve every name before any work, so a wrong one fails fast (A1111 fails after the first pass).
        entry = self.resolve_checkpoint(plan.checkpoint)
        resolved = resolve_models(self, plan, entry)
        job_timestamp = time.strftime("%Y%m%d%H%M%S")
        # The job shows in `GET /progress` and can be interrupted or skipped once it holds the lock.
        passes = 2 if plan.hires else 1
        with (
            self._generation_lock,
            self.jobs.running(name, request.force_task_id, passes, self.settings.job_timeout_s) as running,
        ):
            # New or changed embedding files are picked up without a restart (A1111 rescans before each job).
            self.embeddings.refresh()
            models = load_models(self, plan, resolved)
            if plan.vae_tiling is not None:
                models = _with_vae_tiling(models, plan.vae_tiling)
            if plan.face_swap is not None:
                # ReActor's models and source face, loaded and analysed before any denoising.
                models = replace(models, face_swap=prepare_stage(plan.face_swap, self))
            if any(unit.controlnet is not None for unit in plan.detailers):
                models = replace(models, make_control=self._detailer_control)
            if plan.control_units:
                # Resolve, load and preprocess the units (face analysis included) before any denoising.
                hires_size = plan.hires.output_size if plan.hires else None
                control = prepare_control(
                    plan.control_units,
                    self.catalog,
                    self.control_models,
                    (plan.width, plan.height),
                    hires_size,
                    # sd-webui-controlnet `set_numpy_seed`: the first seed plus the first subseed.
                    seed=plan.noise.seeds[0] + plan.noise.subseeds[0],
                )
                models = replace(models, control=control)
            output, lora_notes, memory_note = self._run(plan, models, running, on_progress)
        # A1111's order: scripts' and hires keys (planned), then Lora hashes, then TI hashes / Emphasis, then
        # what sampling wrote (the refiner's keys).
        extra = {**dict(plan.infotext_extra), **output.infotext_params()}
        if models.base.is_inpainting:
            extra["Conditional mask weight"] = INPAINTING_MASK_WEIGHT
        fields = _infotext_fields(request, plan, entry, extra, resolved.vae)
        records = [
            infotexts.ImageRecord(prompt, negative, seed, subseed)
            for prompt, negative, seed, subseed in zip(
                plan.prompts_as_written or plan.prompts,
                plan.negative_prompts,
                plan.noise.seeds,
                plan.noise.subseeds,
                strict=True,
            )
        ]
        made = len(output.images)  # fewer than planned when the job was interrupted
        return GenerationResult(
            images=output.images,
            infotexts=[infotexts.infotext(fields, record) for record in records[:made]],
            info=infotexts.info_json(
                fields,
                records,
                styles=request.styles or [],
                batch_size=plan.batch_size,
                job_timestamp=job_timestamp,
                denoising_strength=request.denoising_strength if plan.hires or plan.init else None,
                extra_keys={"is_using_inpainting_conditioning": True} if models.base.is_inpainting else None,
                image_count=made,
            ),
            parameters=request.parameters(),
            warnings=[
                *plan.warnings,
                *lora_notes,
                *([memory_note] if memory_note else []),
                *output.notes,
                *(models.control.notes if models.control else []),
            ],
            detected_maps=list(models.control.detected_maps) if models.control else [],
            unet_calls=output.unet_calls,
            interrupted=running.stop.interrupted,
            restorer_calls=output.restorer_calls,
        )

    def _detailer_control(self, units, size, seed: int):
        """ADetailer's ControlNet for one inpaint pass: the same preparation as the request's units."""
        return prepare_control(units, self.catalog, self.control_models, size, seed=seed)

    def _run(
        self, plan: GenerationPlan, models: Models, running: RunningJob, on_progress
    ) -> tuple[GenerationOutput, list[str], str | None]:
        """Generate with the request's changes to shared modules in place, all undone afterwards even when the
        request fails: circular padding for `tiling`, and the LoRAs each pass activates. Out of memory, the
        plan runs once more on lower-memory views of the models (engine.memory). Returns the output, the LoRA
        notes and the note of that retry (None without one)."""
        with circular_padding(plan.tiling, _unets_and_vaes(models)) as padding:
            # A LoRA's own convolutions (LoCon) are padded like the layers they extend.
            after_load = (lambda pipe: padding.cover(pipe.unet)) if padding is not None else None
            with LoraSession(self.catalog, after_load=after_load) as loras:

                def attempt(low_memory: bool) -> GenerationOutput:
                    chosen = replace(models, loras=loras)
                    if low_memory:
                        chosen = chosen.with_low_memory(LOW_MEMORY_VAE_TILING, LOW_MEMORY_UNET_ROWS)
                    return generate(plan, chosen, running.reporter(on_progress), running.stop)

                output, memory_note = run_with_memory_fallback(attempt, self.precision.device)
        return output, loras.notes, memory_note

    def warm_up(self) -> None:
        """Load the default checkpoint (and any `PRELOAD` ones) now rather than on the first request."""
        names = self.settings.preload or (
            (self.settings.default_checkpoint,) if self.settings.default_checkpoint else ()
        )
        entries = [self.catalog.find_checkpoint(name, field="PRELOAD") for name in names]
        if not entries and (default := self.default_checkpoint()) is not None:
            entries = [default]
        for entry in entries:
            self._pipelines.get(entry)

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
        if speedups.sdxl_vae_fp16_fix and pipeline.is_sdxl:
            fixed = self.vaes.fp16_fixed(entry, self.precision)
            pipeline = pipeline.with_vae(fixed) if fixed is not None else pipeline
        logger.info(
            "loaded %s in %.1f s on %s", entry.name, time.perf_counter() - started, self.precision.device
        )
        return pipeline


def _with_vae_tiling(models: Models, tiling) -> Models:
    """Views of the passes' pipelines whose VAE runs with this request's tiling (`Tiled VAE`); the shared
    pipelines are untouched."""

    def view(pipe):
        if pipe is None:
            return None
        tiled = pipe.with_vae(pipe.vae)
        tiled.vae_tiling = tiling
        return tiled

    return replace(models, base=view(models.base), hires=view(models.hires), refiner=view(models.refiner))


def _parameters(request) -> dict[str, Any]:
    """A1111's response `parameters`: the request with defaults filled; img2img's (large) init images and mask
    only when `include_init_images` asks for them."""
    parameters = request.parameters()
    if isinstance(request, Img2ImgRequest) and not request.include_init_images:
        parameters.update(init_images=None, mask=None)
    return parameters


def _unets_and_vaes(models: Models) -> list:
    return [module for pipe in models.pipelines() for module in (pipe.unet, pipe.vae)]


def _infotext_fields(request, plan: GenerationPlan, entry: CheckpointEntry, extra: dict, vae):
    choice = plan.sampler.choice
    return infotexts.InfotextFields(
        steps=plan.num_inference_steps,
        sampler=choice.sampler,
        schedule_type=choice.schedule,
        cfg_scale=plan.guidance_scale,
        width=request.width,
        height=request.height,
        model_hash=entry.shorthash,
        model_name=entry.name_for_extra,
        subseed_strength=plan.noise.subseed_strength,
        seed_resize_from=plan.noise.seed_resize_from,
        clip_skip=plan.prompt_options.clip_skip,
        ensd=plan.noise.eta_noise_seed_delta if choice.uses_ensd else None,
        rng=plan.noise.source,
        face_restoration=plan.face_restoration.model if plan.face_restoration else None,
        tiling=plan.tiling,
        extra=extra,
        **vae_infotext_fields(vae),
    )
