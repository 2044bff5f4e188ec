"""Hires fix's second pass, as A1111 plans it (`StableDiffusionProcessingTxt2Img.init`, `calculate_target_resolution`)."""

import math
from typing import Any

from engine import samplers
from engine.errors import RequestError
from engine.networks import lora_requests
from engine.plan import GenerationPlan, HiresPlan, SamplerSpec
from engine.prompts.parser import extract_extra_networks
from engine.translate.common import SAME_CHECKPOINT, SAME_SAMPLER, bounded_int, sampler_options


def hires_plan(request, settings, first: GenerationPlan, options):
    """A1111's hires fix: target size (`calculate_target_resolution`), steps, prompts, LoRAs and sampler of
    pass 2, after the first pass `first`. Returns (HiresPlan, its infotext entries)."""
    prompts, negative_prompts = first.prompts, first.negative_prompts
    steps, sampler = first.num_inference_steps, first.sampler
    if request.denoising_strength is None:
        # A1111 crashes with HTTP 500 here, after the first pass has already run.
        raise RequestError("denoising_strength", "is required with enable_hr: a number in [0, 1]")
    if not 0 <= request.denoising_strength <= 1:
        raise RequestError(
            "denoising_strength", f"must be in [0, 1] with enable_hr, got {request.denoising_strength}"
        )
    width, height = request.width, request.height
    resize_x, resize_y = request.hr_resize_x or 0, request.hr_resize_y or 0
    crop = (0, 0)
    extra: list[tuple[str, Any]] = [("Denoising strength", request.denoising_strength)]
    if not resize_x and not resize_y:
        scale = request.hr_scale if request.hr_scale is not None else 2.0
        if not math.isfinite(scale):
            raise RequestError("hr_scale", f"must be a finite number, got {scale}")
        if scale <= 0:
            raise RequestError("hr_scale", f"must be positive, got {scale}")
        target = (int(width * scale), int(height * scale))
        size_params = [("Hires upscale", scale)]
        size_field = "hr_scale"
    else:
        if resize_x < 0 or resize_y < 0:
            raise RequestError("hr_resize_x", "hr_resize_x and hr_resize_y must be ≥ 0")
        target = _hires_resize(width, height, resize_x, resize_y)
        if resize_x and resize_y:
            # Cover the box keeping the aspect ratio, then cut the latent's centre (A1111 truncate_x/y).
            crop = ((target[0] - resize_x) // 8, (target[1] - resize_y) // 8)
        size_params = [("Hires resize", f"{resize_x}x{resize_y}")]
        size_field = "hr_resize_x" if resize_x else "hr_resize_y"
    if target[0] < 8 or target[1] < 8 or target[0] * target[1] > settings.max_pixels:
        raise RequestError(
            size_field, f"the hires size {target[0]}x{target[1]} must be within {settings.max_pixels} pixels"
        )

    hr_steps = request.hr_second_pass_steps or steps
    bounded_int(hr_steps, "hr_second_pass_steps", 1, settings.max_steps)
    hr_choice = sampler.choice
    if request.hr_sampler_name not in SAME_SAMPLER or request.hr_scheduler not in (
        None,
        "",
        "Use same scheduler",
    ):
        hr_choice = samplers.resolve_sampler(
            sampler.choice.sampler if request.hr_sampler_name in SAME_SAMPLER else request.hr_sampler_name,
            request.hr_scheduler or request.scheduler,
            field="hr_sampler_name",
        )
    if request.denoising_strength == 0:
        _check_zero_strength_sampler(hr_choice)
    hr_prompts, loras = prompts, first.loras
    written = first.prompts_as_written or prompts
    hr_written = (request.hr_prompt,) * len(prompts) if request.hr_prompt else written
    if request.hr_prompt:
        # A1111 activates hr_prompt's own networks for the second pass (`hr_extra_network_data`).
        text, tags = extract_extra_networks(request.hr_prompt)
        hr_prompts = (text,) * len(prompts)
        loras = tuple(lora_requests(tags, "hr_prompt")) if first.extra_networks_enabled else ()
    hr_negatives = (
        (request.hr_negative_prompt,) * len(prompts) if request.hr_negative_prompt else negative_prompts
    )
    checkpoint = None if request.hr_checkpoint_name in SAME_CHECKPOINT else request.hr_checkpoint_name

    if checkpoint:
        extra.append(("Hires checkpoint", checkpoint))
    if hr_choice.sampler != sampler.choice.sampler:
        extra.append(("Hires sampler", hr_choice.sampler))
    if hr_written != written:
        extra.append(("Hires prompt", hr_written[0]))
    if hr_negatives != negative_prompts:
        extra.append(("Hires negative prompt", hr_negatives[0]))
    if hr_choice.schedule != sampler.choice.schedule:
        extra.append(("Hires schedule type", hr_choice.schedule))
    extra += size_params
    if request.hr_second_pass_steps:
        extra.append(("Hires steps", request.hr_second_pass_steps))
    if request.hr_upscaler is not None:
        extra.append(("Hires upscaler", request.hr_upscaler))

    plan = HiresPlan(
        width=target[0],
        height=target[1],
        crop=crop,
        # A1111's default when hr_upscaler is None is its default latent mode, "Latent" (bilinear).
        upscaler=request.hr_upscaler or "Latent",
        num_inference_steps=hr_steps,
        strength=min(request.denoising_strength, 0.999),
        prompts=hr_prompts,
        negative_prompts=hr_negatives,
        sampler=SamplerSpec(hr_choice, sampler_options(request, hr_choice, options)),
        checkpoint=checkpoint,
        loras=loras,
    )
    return plan, tuple(extra)


def _hires_resize(width: int, height: int, resize_x: int, resize_y: int) -> tuple[int, int]:
    if not resize_y:
        return resize_x, resize_x * height // width
    if not resize_x:
        return resize_y * width // height, resize_y
    if width / height < resize_x / resize_y:
        return resize_x, resize_x * height // width
    return resize_y * width // height, resize_y


# Samplers A1111 cannot run over its zero-step schedule at denoising strength 0: the timestep samplers divide
# 1000 by the step count, DPM fast / adaptive read the schedule's next-to-last sigma (HTTP 500 in A1111).
ZERO_STRENGTH_FAILURES = {"timesteps": "divides by its zero step count", "dpm_fast": "needs a sigma range",
                          "dpm_adaptive": "needs a sigma range"}


def _check_zero_strength_sampler(choice) -> None:
    """At strength 0 A1111 asks for a 0-step schedule: k-diffusion samplers then run no step at all (the
    upscaled latents are decoded as they are), the samplers named above crash."""
    reason = ZERO_STRENGTH_FAILURES.get(choice.definition.family) or ZERO_STRENGTH_FAILURES.get(
        choice.definition.algorithm
    )
    if reason:
        raise RequestError(
            "denoising_strength",
            f"0 with hires sampler {choice.sampler!r}: its zero-step schedule {reason} (HTTP 500 in A1111); "
            "use a strength above 0 or another hr_sampler_name",
        )
