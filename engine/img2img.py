"""img2img and inpainting's base pass (A1111 `StableDiffusionProcessingImg2Img.init` + `sample`)."""

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.detailer.prompts import inpaint_steps
from engine.errors import RequestError
from engine.imaging.inpaint import (
    InpaintRegion,
    create_binary_mask,
    fill_masked,
    latent_mask,
    prepare_inpaint,
    resize_image,
)
from engine.passes import InitLatents, PassRequest, run_pass
from engine.plan import GenerationPlan, InitPlan, NoiseSpec
from engine.restore.step import restore_decoded
from engine.sampling.noise import ImageNoise


LATENT_UPSCALE = 3  # resize_mode "Just resize (latent upscale)": encode as is, then resize the latents


@dataclass(frozen=True)
class PreparedInit:
    """A batch's init images as the VAE sees them, and how to put the results back."""

    images: list[Image.Image]
    regions: list[InpaintRegion] | None  # inpainting only


def img2img_pass(
    models,
    plan: GenerationPlan,
    batch: slice,
    noise: NoiseSpec,
    base: PassRequest,
    on_step,
    output,
    refiner=None,
    stop=None,
):
    """Encode the batch's init images, noise them to the strength's starting sigma, denoise (blending the
    original back outside the mask), decode, restore faces and paste back. Counts the pass into `output`;
    returns the images. `refiner` (an `engine.refiner.RefinerStage`) hands the pass over to the refiner where
    A1111 would; `stop` (a StopSignal) can end the denoising early."""
    init, pipe = plan.init, models.base
    prepared = _prepare(init, plan, batch)
    generator = torch.Generator("cpu").manual_seed(int(noise.seeds[-1]))
    latents = pipe.encode_images(prepared.images, generator)
    if init.resize_mode == LATENT_UPSCALE and init.mask is None:
        latents = F.interpolate(latents, size=(plan.height // 8, plan.width // 8), mode="bilinear")
    repaint = None
    if prepared.regions is not None:
        # A given latent mask (A1111 `p.latent_mask`) replaces the processed inpainting mask for the blend.
        masks = [
            latent_mask(
                init.latent_mask if init.latent_mask is not None else region.mask,
                plan.width // 8,
                plan.height // 8,
                init.mask_round,
            )
            for region in prepared.regions
        ]
        repaint = torch.from_numpy(np.stack(masks))[:, None].to(latents.device)
        latents = _fill_latents(latents, repaint, init.fill, noise)
    # A1111 without img2img_fix_steps: int(denoise · steps) + 1 steps from the matching point of the schedule.
    steps_total, steps_run = inpaint_steps(base.steps_total, init.strength)
    request = replace(
        base, steps_total=steps_total, steps_run=steps_run, noise_multiplier=init.noise_multiplier
    )
    conditioning = _image_conditioning(pipe, prepared, plan, init.mask_round, generator)
    init_latents = InitLatents(latents, repaint, conditioning)
    result = run_pass(
        pipe,
        request,
        noise,
        init_latents,
        on_step,
        models.embeddings,
        models.control,
        refiner=refiner,
        should_stop=stop.requested if stop is not None else None,
    )
    output.add(result)
    images = (refiner.pipe if result.refined else pipe).decode_to_images(result.latents)
    if models.control is not None:
        # sd-webui-controlnet's pixel steps run on the decoded pass, before A1111 pastes it back.
        images = models.control.postprocess(images, plan.width, plan.height)
    # A1111 restores faces on the decoded image, before the overlay puts the original back outside the mask.
    images = restore_decoded(images, models.restorer, plan.face_restoration, noise.seeds, batch.start, output)
    if prepared.regions is not None:
        images = [region.paste_back(image) for region, image in zip(prepared.regions, images, strict=True)]
    return images


def _image_conditioning(pipe, prepared: PreparedInit, plan: GenerationPlan, round_mask: bool, generator):
    """An inpainting checkpoint's mask + masked-image input (A1111 `img2img_image_conditioning`): the VAE
    sample continues the generator that sampled the init latents, as A1111's global RNG does. Without a mask
    the whole image counts as masked."""
    if not pipe.is_inpainting:
        return None
    if prepared.regions is None:
        return pipe.full_mask_conditioning(len(prepared.images), plan.width, plan.height, generator)
    masks = [region.mask for region in prepared.regions]
    return pipe.inpainting_conditioning(prepared.images, masks, generator, round_mask)


def _prepare(init: InitPlan, plan: GenerationPlan, batch: slice) -> PreparedInit:
    # One init image is used for the whole batch; several are one per image (A1111).
    sources = [init.images[i % len(init.images)] for i in range(batch.start, batch.stop)]
    if init.mask is None:
        if init.resize_mode == LATENT_UPSCALE:
            return PreparedInit([image.convert("RGB") for image in sources], None)
        return PreparedInit(
            [
                resize_image(init.resize_mode, image.convert("RGB"), plan.width, plan.height)
                for image in sources
            ],
            None,
        )
    if create_binary_mask(init.mask, init.mask_round).getbbox() is None and not init.invert_mask:
        raise RequestError("mask", "is empty (all black): nothing would be inpainted")
    regions = [
        prepare_inpaint(
            image,
            init.mask,
            plan.width,
            plan.height,
            mask_blur=init.mask_blur,
            only_masked=init.only_masked,
            padding=init.padding,
            resize_mode=min(init.resize_mode, 2),
            invert=init.invert_mask,
            round_alpha=init.mask_round,
        )
        for image in sources
    ]
    images = [region.init_image for region in regions]
    if init.fill == "fill":
        images = [fill_masked(image, region.mask) for image, region in zip(images, regions, strict=True)]
    return PreparedInit(images, regions)


def _fill_latents(latents, repaint, fill: str, noise: NoiseSpec):
    """A1111's latent fills: "latent noise" puts seeded noise under the mask, "latent nothing" zeros."""
    keep = 1 - repaint
    if fill == "latent noise":
        fresh = ImageNoise(
            latents.shape[1:],
            list(noise.seeds),
            subseeds=list(noise.subseeds),
            device=latents.device,
            source=noise.source,
        ).first()
        return latents * keep + fresh * repaint
    if fill == "latent nothing":
        return latents * keep
    return latents
