"""What txt2img and img2img plan alike: batch, size, prompts, seeds, sampler, ADetailer."""

from typing import Any

from engine import samplers
from engine.control.units import infotext_params, parse_controlnet_args
from engine.detailer.args import parse_adetailer_args
from engine.errors import RequestError, UnsupportedError
from engine.faceswap.args import parse_reactor_args
from engine.networks import lora_requests
from engine.plan import GenerationPlan, SamplerSpec
from engine.prompts.options import prompt_options_from
from engine.prompts.styles import StyleDatabase
from engine.prompts.wildcards import wildcard_folder
from engine.settings import Settings
from engine.translate.alwayson import apply_builtin_scripts
from engine.translate.common import (
    bounded_int,
    check_prompt_lengths,
    image_size,
    is_img2img,
    noise_spec,
    per_image,
    read_override_settings,
    reject_unsupported,
    request_warnings,
    sampler_options,
    take_extra_networks,
)
from engine.translate.detailer import detailer_plans
from engine.translate.faces import face_restoration_plan
from engine.translate.prompt_scripts import apply_prompt_scripts
from engine.translate.refiner import refiner_plan
from engine.translate.styles import apply_request_styles
from engine.wire.txt2img import GenerationRequest


def plan_generation(
    request: GenerationRequest,
    settings: Settings,
    defaults: dict[str, Any] | None = None,
    batch_size: int | None = None,
    img2img: bool = False,
    prompt_infotext: tuple[tuple[str, Any], ...] = (),
    seeds: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
) -> tuple[GenerationPlan, dict[str, Any]]:
    """The plan without txt2img's hires fix or img2img's init images, and the effective A1111 options.

    Args:
        request: the parsed A1111 payload.
        settings: limits (steps, pixels, batch) and the default checkpoint.
        defaults: the worker's current options (A1111 `opts`), overridden by `override_settings`.
        batch_size: overrides the request's (img2img with several init images: one per image, as A1111).
        img2img: ControlNet units may leave out their image (they take the init image).
        prompt_infotext: infotext keys of the prompt scripts (`RewrittenPrompts.infotext`).
        seeds: (seeds, subseeds) per image when a prompt script set them; None: A1111's seed + i.
    """
    reject_unsupported(request)
    check_prompt_lengths(request, settings.max_prompt_chars)
    options = {**(defaults or {}), **read_override_settings(request.override_settings or {})}
    batch_size = batch_size or bounded_int(request.batch_size, "batch_size", 1, settings.max_batch_images)
    n_iter = bounded_int(request.n_iter, "n_iter", 1, settings.max_batch_images)
    if batch_size * n_iter > settings.max_batch_images:
        raise RequestError("batch_size", f"batch_size × n_iter must be at most {settings.max_batch_images}")
    width, height = image_size(request, settings)
    count = batch_size * n_iter
    choice = samplers.resolve_sampler(request.sampler_name or request.sampler_index, request.scheduler)
    written = per_image(request.prompt, count, "prompt")
    prompts, networks = take_extra_networks(written, request)
    negative_prompts = per_image(request.negative_prompt, count, "negative_prompt")
    steps = bounded_int(request.steps, "steps", 1, settings.max_steps)
    sampler = SamplerSpec(choice, sampler_options(request, choice, options))
    adetailer = parse_adetailer_args(request.alwayson_scripts)
    refiner, refiner_notes = refiner_plan(request, options)
    control_units = parse_controlnet_args(request.alwayson_scripts, img2img=img2img,
                                          limits=settings.limits_for_images("controlnet"),
                                          max_units=settings.max_control_units)
    if refiner is not None and control_units:
        # A1111's ControlNet hooks the base UNet only; after the switch its units would silently stop.
        raise UnsupportedError(
            "refiner_checkpoint", "a refiner together with ControlNet units is not supported"
        )
    plan = GenerationPlan(
        checkpoint=options.get("sd_model_checkpoint") or settings.default_checkpoint,
        vae=options.get("sd_vae"),
        prompts=prompts,
        prompts_as_written=written,
        extra_networks_enabled=not request.disable_extra_networks,
        negative_prompts=negative_prompts,
        noise=noise_spec(request, count, options, seeds),
        batch_size=batch_size,
        n_iter=n_iter,
        width=width,
        height=height,
        num_inference_steps=steps,
        guidance_scale=float(request.cfg_scale if request.cfg_scale is not None else 7.0),
        sampler=sampler,
        # The worker's PAD_COND_UNCOND is the default of A1111's option; override_settings still wins.
        prompt_options=prompt_options_from({"pad_cond_uncond": settings.speedups.pad_cond_uncond, **options}),
        extra_networks=networks,
        loras=tuple(lora_requests(networks)),
        control_units=control_units,
        detailers=detailer_plans(adetailer, request, width, height, steps, sampler, options, settings,
                                 control_units),
        face_restoration=face_restoration_plan(request.restore_faces, options),
        refiner=refiner,
        face_swap=parse_reactor_args(request.alwayson_scripts, img2img=img2img),
        # A1111: the request's `tiling`, else the `tiling` option.
        tiling=bool(request.tiling if request.tiling is not None else options.get("tiling", False)),
        # A1111 adds the scripts' keys (ADetailer's) before hires fix or img2img add their own.
        infotext_extra=(
            *adetailer.infotext_params().items(), *prompt_infotext, *infotext_params(control_units).items()
        ),
        warnings=(*request_warnings(request), *refiner_notes),
    )
    return plan, options


def prepare_request(
    request: GenerationRequest,
    styles: StyleDatabase | None,
    settings: Settings | None = None,
    defaults: dict[str, Any] | None = None,
):
    """What A1111 does to a request before it plans the passes: its built-in always-on scripts set their fields
    (`Seed`, `Sampler`, `Refiner`…), the styles are merged into the prompts (`setup_prompts`), then the
    prompt scripts (Dynamic Prompts, Simple wildcards) make each image's prompt.

    Returns:
        (the rewritten request, warnings, a VAE tiling asked for by `Tiled VAE` or None, the prompt scripts'
        `RewrittenPrompts`).
    """
    settings = settings or Settings()
    request, script_warnings, vae_tiling = apply_builtin_scripts(request, is_img2img(request))
    request, style_warnings = apply_request_styles(request, styles)
    options = {**(defaults or {}), **read_override_settings(request.override_settings or {})}
    rewritten = apply_prompt_scripts(
        request,
        wildcard_folder(settings.models_dir, settings.wildcards_dir),
        options,
        settings.max_batch_images,
    )
    return rewritten.request, script_warnings + style_warnings, vae_tiling, rewritten
