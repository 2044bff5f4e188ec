"""A generation's output as A1111 describes it: infotext fields, one infotext per image, the `info` JSON and
the warnings gathered along the way."""

from engine.generate import GenerationOutput, Models
from engine.pipeline import INPAINTING_MASK_WEIGHT
from engine.plan import GenerationPlan
from engine.plan_models import ResolvedModels
from engine.resources.vae import vae_infotext_fields
from engine.result import GenerationResult
from engine.wire import info as infotexts


def describe(
    request,
    plan: GenerationPlan,
    resolved: ResolvedModels,
    models: Models,
    output: GenerationOutput,
    notes: list[str],
    job_timestamp: str,
    interrupted: bool,
) -> GenerationResult:
    """The result of one generation: `output`'s images with their infotexts, A1111's `info`, warnings.

    Args:
        request: the parsed txt2img/img2img request (its fields as sent go into `info`).
        resolved: the files the plan ran on (checkpoint and VAE are named in the infotext).
        models: what ran (inpainting checkpoints and ControlNet add keys and maps).
        notes: the run's own warnings (LoRA, out-of-memory retry), after the plan's.
        job_timestamp: when the job started, `%Y%m%d%H%M%S` as A1111's `job_timestamp`.
        interrupted: the job was stopped (fewer images than planned).
    """
    # A1111's order: scripts' and hires keys (planned), then Lora hashes, then TI hashes / Emphasis, then
    # what sampling wrote (the refiner's keys).
    extra = {**dict(plan.infotext_extra), **output.infotext_params()}
    if models.base.is_inpainting:
        extra["Conditional mask weight"] = INPAINTING_MASK_WEIGHT
    fields = _infotext_fields(request, plan, resolved, extra)
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
            *notes,
            *output.notes,
            *(models.control.notes if models.control else []),
        ],
        detected_maps=list(models.control.detected_maps) if models.control else [],
        unet_calls=output.unet_calls,
        interrupted=interrupted,
        restorer_calls=output.restorer_calls,
    )


def _infotext_fields(request, plan: GenerationPlan, resolved: ResolvedModels, extra: dict):
    choice = plan.sampler.choice
    entry = resolved.checkpoint
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
        **vae_infotext_fields(resolved.vae),
    )
