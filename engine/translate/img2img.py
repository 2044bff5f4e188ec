"""A1111 img2img request → `GenerationPlan` with an `InitPlan` (`StableDiffusionProcessingImg2Img.init`)."""

from dataclasses import replace
from typing import Any

from engine.control.img2img_units import with_init_image
from engine.errors import RequestError
from engine.imaging.decode import check_image_count, decode_image
from engine.imaging.limits import ImageLimits
from engine.plan import GenerationPlan, InitPlan
from engine.prompts.styles import StyleDatabase
from engine.settings import Settings
from engine.translate.common import MAX_MASK_BLUR, bounded_int
from engine.translate.generation import plan_generation, prepare_request
from engine.wire.img2img import Img2ImgRequest


# A1111 `inpainting_fill` values.
INPAINTING_FILLS = ("fill", "original", "latent noise", "latent nothing")
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")


def to_img2img_plan(
    request: Img2ImgRequest,
    settings: Settings,
    defaults: dict[str, Any] | None = None,
    styles: StyleDatabase | None = None,
) -> GenerationPlan:
    """Validate an img2img request and translate it: init images, mask, strength, inpainting options."""
    request, rewrite_warnings, vae_tiling, prompts = prepare_request(request, styles, settings, defaults)
    if not request.init_images:
        raise RequestError("init_images", "is required: a list of base64-encoded images")
    # Counts first: no image is decoded for a request refused for how many it sends.
    limits = settings.limits_for_images("init_images")
    check_image_count(request.init_images, "init_images", limits)
    requested_batch = request.batch_size or 1
    if len(request.init_images) > 1 and len(request.init_images) > requested_batch:
        # A1111: "bad number of images passed".
        raise RequestError(
            "init_images", f"holds {len(request.init_images)} images; at most batch_size ({requested_batch})"
        )
    images = tuple(decode_image(text, f"init_images[{i}]", limits)[0] for i, text in enumerate(request.init_images))
    plan, options = plan_generation(
        request, settings, defaults, batch_size=len(images) if len(images) > 1 else None, img2img=True,
        prompt_infotext=prompts.infotext, seeds=prompts.seeds,
    )
    strength = request.denoising_strength
    if strength is None or not 0 <= strength <= 1:
        raise RequestError("denoising_strength", f"must be a number in [0, 1], got {strength!r}")
    init = InitPlan(
        images=images,
        strength=min(strength, 0.999),
        resize_mode=_choice(request.resize_mode, RESIZE_MODES, "resize_mode"),
        mask=_mask(request, images[0].size, settings.limits_for_images("mask")),
        latent_mask=(decode_image(request.latent_mask, "latent_mask", settings.limits_for_images("mask"))[0]
                     if request.latent_mask else None),
        mask_blur=_mask_blur(request),
        invert_mask=bool(request.inpainting_mask_invert),
        mask_round=request.mask_round is not False,
        fill=INPAINTING_FILLS[_choice(request.inpainting_fill, INPAINTING_FILLS, "inpainting_fill")],
        only_masked=bool(request.inpaint_full_res),
        padding=max(0, request.inpaint_full_res_padding or 0),
        noise_multiplier=float(
            request.initial_noise_multiplier
            if request.initial_noise_multiplier is not None
            else options.get("initial_noise_multiplier", 1.0)
        ),
    )
    extra = [("Denoising strength", strength)]
    if init.mask is not None:
        extra += [("Mask blur", request.mask_blur if request.mask_blur is not None else init.mask_blur[0])]
        if init.only_masked:
            extra += [("Inpaint area", "Only masked"), ("Masked area padding", init.padding)]
    warnings = plan.warnings + tuple(rewrite_warnings)
    if request.image_cfg_scale is not None:
        warnings += ("ignored image_cfg_scale: it applies to instruct-pix2pix models only",)
    units, notes = with_init_image(plan.control_units, init, plan.width, plan.height)
    return replace(
        plan,
        init=init,
        infotext_extra=plan.infotext_extra + tuple(extra),
        control_units=units,
        warnings=warnings + tuple(notes),
        vae_tiling=vae_tiling,
    )


def _choice(value: int | None, names: tuple[str, ...], field: str) -> int:
    value = 0 if value is None else value
    if not 0 <= value < len(names):
        listed = ", ".join(f"{i} ({name})" for i, name in enumerate(names))
        raise RequestError(field, f"must be one of {listed}, got {value!r}")
    return value


def _mask(request: Img2ImgRequest, size: tuple[int, int], limits: ImageLimits):
    if not request.mask:
        return None
    mask, _ = decode_image(request.mask, "mask", limits)
    if mask.size != size:
        # A1111 resizes the mask with the image; a different size is almost always a client mistake.
        raise RequestError("mask", f"is {mask.size[0]}x{mask.size[1]}, the init image {size[0]}x{size[1]}")
    return mask


def _mask_blur(request: Img2ImgRequest) -> tuple[int, int]:
    """`mask_blur` sets both axes (A1111's property setter); else mask_blur_x / mask_blur_y. Each within
    0..MAX_MASK_BLUR (A1111's slider)."""
    if request.mask_blur is not None:
        blur = bounded_int(request.mask_blur, "mask_blur", 0, MAX_MASK_BLUR)
        return blur, blur
    return (
        bounded_int(request.mask_blur_x if request.mask_blur_x is not None else 4, "mask_blur_x", 0, MAX_MASK_BLUR),
        bounded_int(request.mask_blur_y if request.mask_blur_y is not None else 4, "mask_blur_y", 0, MAX_MASK_BLUR),
    )
