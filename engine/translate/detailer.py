"""ADetailer units → `DetailerPlan`s, in diffusers' terms."""

from engine import samplers
from engine.control.detailer_units import detailer_controlnets
from engine.detailer.args import ADetailerArgs
from engine.errors import RequestError
from engine.networks import lora_requests
from engine.plan import DetailerPlan, SamplerSpec
from engine.prompts.parser import extract_extra_networks
from engine.settings import Settings
from engine.translate.common import (
    MAX_DILATE_ERODE,
    MAX_MASK_BLUR,
    SAME_CHECKPOINT,
    SAME_SAMPLER,
    bounded_int,
    check_prompt_length,
    multiple_of_8,
    sampler_options,
)
from engine.translate.faces import face_restoration_plan


SAME_VAE = ("None", "Use same VAE")  # ADetailer keeps the generation's VAE for these


def detailer_plans(adetailer: ADetailerArgs, request, width, height, steps, sampler, options, settings: Settings,
                   control_units=()):
    """ADetailer's inner img2img per unit (`get_i2i_p`): its own steps, cfg, sampler, size... when its
    `ad_use_*` flags say so, else the request's; the size is the *base* size even under hires fix. The unit's
    own steps, size and prompts are bounded by `settings` as the request's are. `control_units`: the request's
    ControlNet units, which "Passthrough" runs in the inner pass."""
    plans = []
    for position, unit in adetailer.active_units:
        _check_unit_bounds(unit, lambda key, position=position: adetailer.field(position, key), settings)
        unit_sampler = sampler
        if unit.ad_use_sampler:
            same = unit.ad_sampler in SAME_SAMPLER
            schedule = (
                request.scheduler if unit.ad_scheduler in ("", "Use same scheduler") else unit.ad_scheduler
            )
            choice = samplers.resolve_sampler(
                sampler.choice.sampler if same else unit.ad_sampler,
                schedule,
                field=adetailer.field(position, "ad_sampler"),
            )
            unit_sampler = SamplerSpec(choice, sampler_options(request, choice, options))
        # The unit's passes activate the `<lora:…>` tags of ad_prompt: a wrong tag fails before any work.
        lora_requests(extract_extra_networks(unit.ad_prompt)[1], adetailer.field(position, "ad_prompt"))
        checkpoint = None
        if unit.ad_use_checkpoint and unit.ad_checkpoint not in (*SAME_CHECKPOINT, "None"):
            checkpoint = unit.ad_checkpoint
        plans.append(
            DetailerPlan(
                model=unit.ad_model,
                model_field=adetailer.field(position, "ad_model"),
                confidence=unit.ad_confidence,
                mask_options=unit.mask_options(),
                prompt=unit.ad_prompt,
                negative_prompt=unit.ad_negative_prompt,
                strength=unit.ad_denoising_strength,
                only_masked=unit.ad_inpaint_only_masked,
                padding=unit.ad_inpaint_only_masked_padding,
                mask_blur=unit.ad_mask_blur,
                size=multiple_of_8(unit.processing_size(width, height)),
                num_inference_steps=unit.steps(steps),
                guidance_scale=unit.cfg_scale(
                    float(request.cfg_scale if request.cfg_scale is not None else 7.0)
                ),
                sampler=unit_sampler,
                noise_multiplier=unit.ad_noise_multiplier if unit.ad_use_noise_multiplier else 1.0,
                clip_skip=unit.ad_clip_skip if unit.ad_use_clip_skip else None,
                checkpoint=checkpoint,
                # ADetailer's `get_override_settings`: sd_vae = ad_vae, except "None" / "Use same VAE".
                vae=unit.ad_vae if unit.ad_use_vae and unit.ad_vae not in (None, "", *SAME_VAE) else None,
                # ADetailer's inner img2img gets restore_faces=ad_restore_face and A1111's options.
                face_restoration=face_restoration_plan(unit.ad_restore_face, options),
                controlnets=detailer_controlnets(unit, adetailer.field(position, "ad_controlnet_model"), control_units),
            )
        )
    return tuple(plans)


def _check_unit_bounds(unit, field, settings: Settings) -> None:
    """What a unit makes the worker do, within the request limits (ADetailer itself allows any step count and
    sizes up to 4096 × 4096); only the values the unit's `ad_use_*` flags put to use."""
    if unit.ad_use_steps:
        bounded_int(unit.ad_steps, field("ad_steps"), 1, settings.max_steps)
    if unit.ad_use_inpaint_width_height:
        width, height = unit.ad_inpaint_width, unit.ad_inpaint_height
        if width * height > settings.max_pixels:
            raise RequestError(field("ad_inpaint_width"), f"ad_inpaint_width × ad_inpaint_height is {width}x{height}; "
                                                          f"at most {settings.max_pixels} pixels accepted")
    bounded_int(unit.ad_mask_blur, field("ad_mask_blur"), 0, MAX_MASK_BLUR)
    bounded_int(unit.ad_dilate_erode, field("ad_dilate_erode"), -MAX_DILATE_ERODE, MAX_DILATE_ERODE)
    for key in ("ad_prompt", "ad_negative_prompt"):
        check_prompt_length(getattr(unit, key), field(key), settings.max_prompt_chars)
