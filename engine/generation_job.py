"""One generation job, start to finish (the caller holds the engine's queue): plan the request, resolve its
models, load them, prepare ControlNet, run the passes with the request's changes to shared modules undone
afterwards, and describe the output as A1111 does."""

import time
from dataclasses import replace
from functools import partial

from engine.errors import RequestError
from engine.faceswap.run import prepare_stage
from engine.generate import GenerationOutput, Models, generate
from engine.memory import LOW_MEMORY_UNET_ROWS, LOW_MEMORY_VAE_TILING, run_with_memory_fallback
from engine.networks.session import LoraSession
from engine.plan import GenerationPlan
from engine.plan_models import load_models, resolve_models
from engine.result import GenerationResult
from engine.result_info import describe
from engine.seamless import circular_padding
from engine.translate import to_img2img_plan, to_plan
from engine.wire.img2img import Img2ImgRequest
from engine.wire.routes import RunningJob


def plan_request(engine, request, seeds: list[int] | None = None) -> GenerationPlan:
    """The plan of a parsed txt2img/img2img request under the engine's options; `seeds` (one per image)
    replace the ones the request's `seed` gives."""
    defaults = engine.options.for_request()
    if isinstance(request, Img2ImgRequest):
        plan = to_img2img_plan(request, engine.settings, defaults=defaults, styles=engine.styles)
    else:
        plan = to_plan(request, engine.settings, defaults=defaults, styles=engine.styles)
    if seeds is None:
        return plan
    if len(seeds) != plan.image_count:
        raise RequestError("seed", f"{len(seeds)} seeds for {plan.image_count} images")
    return replace(plan, noise=replace(plan.noise, seeds=tuple(int(seed) for seed in seeds)))


def run_generation(engine, name: str, request, plan: GenerationPlan, on_progress) -> GenerationResult:
    """Generate `plan` on `engine` as the job `name` ("txt2img" / "img2img") and describe the result."""
    # Resolve every name before any work, so a wrong one fails fast (A1111 fails after the first pass).
    entry = engine.resolve_checkpoint(plan.checkpoint)
    resolved = resolve_models(engine, plan, entry)
    job_timestamp = time.strftime("%Y%m%d%H%M%S")
    # The job shows in `GET /progress` and can be interrupted or skipped once it holds the lock.
    passes = 2 if plan.hires else 1
    with engine.jobs.running(name, request.force_task_id, passes, engine.settings.job_timeout_s) as running:
        # New or changed embedding files are picked up without a restart (A1111 rescans before each job).
        engine.embeddings.refresh()
        models = load_models(engine, plan, resolved)
        if plan.vae_tiling is not None:
            models = _with_vae_tiling(models, plan.vae_tiling)
        if plan.face_swap is not None:
            # ReActor's models and source face, loaded and analysed before any denoising.
            models = replace(models, face_swap=prepare_stage(plan.face_swap, engine))
        if any(unit.controlnets for unit in plan.detailers):
            models = replace(models, make_control=partial(_detailer_control, engine))
        if plan.control_units:
            # Imported here: ControlNet's preprocessing stack is not part of a plain request's cold start.
            from engine.control.request import prepare_control

            # Resolve, load and preprocess the units (face analysis included) before any denoising.
            hires_size = plan.hires.output_size if plan.hires else None
            control = prepare_control(
                plan.control_units,
                engine.catalog,
                engine.control_models,
                (plan.width, plan.height),
                hires_size,
                # sd-webui-controlnet `set_numpy_seed`: the first seed plus the first subseed.
                seed=plan.noise.seeds[0] + plan.noise.subseeds[0],
            )
            models = replace(models, control=control)
        output, lora_notes, memory_note = _run(engine, plan, models, running, on_progress)
    notes = [*lora_notes, *([memory_note] if memory_note else [])]
    return describe(request, plan, resolved, models, output, notes, job_timestamp, running.stop.interrupted)


def _detailer_control(engine, units, size, seed: int):
    """ADetailer's ControlNet for one inpaint pass: the same preparation as the request's units."""
    from engine.control.request import prepare_control

    return prepare_control(units, engine.catalog, engine.control_models, size, seed=seed)


def _run(
    engine, plan: GenerationPlan, models: Models, running: RunningJob, on_progress
) -> tuple[GenerationOutput, list[str], str | None]:
    """Generate with the request's changes to shared modules in place, all undone afterwards even when the
    request fails: circular padding for `tiling`, and the LoRAs each pass activates. Out of memory, the
    plan runs once more on lower-memory views of the models (engine.memory). Returns the output, the LoRA
    notes and the note of that retry (None without one)."""
    with circular_padding(plan.tiling, _unets_and_vaes(models)) as padding:
        # A LoRA's own convolutions (LoCon) are padded like the layers they extend.
        after_load = (lambda pipe: padding.cover(pipe.unet)) if padding is not None else None
        with LoraSession(engine.catalog, after_load=after_load) as loras:

            def attempt(low_memory: bool) -> GenerationOutput:
                chosen = replace(models, loras=loras)
                if low_memory:
                    chosen = chosen.with_low_memory(LOW_MEMORY_VAE_TILING, LOW_MEMORY_UNET_ROWS)
                return generate(plan, chosen, running.reporter(on_progress), running.stop)

            output, memory_note = run_with_memory_fallback(attempt, engine.precision.device)
    return output, loras.notes, memory_note


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


def _unets_and_vaes(models: Models) -> list:
    return [module for pipe in models.pipelines() for module in (pipe.unet, pipe.vae)]
