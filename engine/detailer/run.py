"""ADetailer's step of the recipe: detect → masks → inpaint each mask, chained, on one finished image."""

import logging
from dataclasses import dataclass, replace

import torch
from PIL import Image

from engine.control.img2img_units import with_init_image
from engine.detailer.masks import prepare_masks
from engine.detailer.prompts import inpaint_steps, mask_prompts
from engine.imaging.inpaint import latent_mask, prepare_inpaint
from engine.networks import lora_requests
from engine.passes import InitLatents, PassRequest, run_pass
from engine.plan import DetailerPlan, InitPlan, NoiseSpec
from engine.prompts.options import PassShape, PromptOptions
from engine.prompts.parser import extract_extra_networks
from engine.restore.step import restore_decoded


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetailTarget:
    """The finished image ADetailer works on, and what A1111 keeps about it (`p.all_prompts[i]`, seeds)."""

    image: Image.Image
    index: int  # position of the image in the request (for notes)
    prompt: str
    negative_prompt: str
    noise: NoiseSpec  # this image's seed and subseed (one entry each)


def detail_image(
    target: DetailTarget,
    units,
    prompt_options: PromptOptions,
    on_step,
    embeddings,
    output,
    loras=None,
    make_control=None,
    should_stop=None,
) -> Image.Image:
    """Run every ADetailer unit in order; each mask starts from the previous mask's result (A1111's
    `postprocess_image` with chained `process_images`). `units` holds each DetailerPlan with its
    (pipeline, detector, face restorer or None); every pass is counted into `output` (a GenerationOutput).
    `loras` (a `LoraSession`, None when extra networks are disabled) activates each mask prompt's `<lora:…>`
    tags. `make_control(units, size, seed)` prepares a unit's `ad_controlnet_*` ControlNet
    (`engine.control.request.prepare_control`).

    `should_stop` (interrupt, skip, timeout) is asked before each unit, as ADetailer checks
    `state.interrupted or state.skipped`, and before every model call: a mask cut short keeps its partial
    inpaint and the masks after it are left alone."""
    image = target.image
    for unit, pipe, detector, restorer in units:
        if should_stop is not None and should_stop():
            break
        found = detector.detect(image, unit.confidence)
        masks = prepare_masks(found, unit.mask_options)
        if not masks:
            output.notes.append(
                f"ADetailer: {unit.model} found nothing in image {target.index + 1}; image left unchanged"
            )
            continue
        seed, subseed = target.noise.seeds[0], target.noise.subseeds[0]
        for mask_prompt in mask_prompts(
            len(masks),
            unit.prompt,
            unit.negative_prompt,
            target.prompt,
            target.negative_prompt,
            seed,
            subseed,
        ):
            if should_stop is not None and should_stop():
                break
            context = (
                target, prompt_options, on_step, embeddings, output, loras, make_control, should_stop, restorer
            )
            image = _inpaint_mask(image, masks[mask_prompt.index], mask_prompt, unit, pipe, context)
    return image


def _inpaint_mask(image, mask, mask_prompt, unit: DetailerPlan, pipe, context):
    """A1111 img2img with `inpaint_full_res` = only masked, `inpainting_fill` = original, seed + j; with
    `ad_restore_face`, the inpainted crop's faces are restored before it is pasted back (A1111's order)."""
    target, prompt_options, on_step, embeddings, output, loras, make_control, should_stop, restorer = context
    # A1111's inner img2img activates the extra networks of its own prompt (none: every LoRA off), on the
    # unit's checkpoint; the tags leave the text either way.
    prompt, tags = extract_extra_networks(mask_prompt.prompt)
    if loras is not None:
        loras.use(pipe, lora_requests(tags, unit.model_field.replace("ad_model", "ad_prompt")))
    width, height = unit.size
    region = prepare_inpaint(
        image,
        mask,
        width,
        height,
        mask_blur=unit.mask_blur,
        only_masked=unit.only_masked,
        padding=unit.padding,
    )
    # A1111 samples the VAE posterior with the global RNG, last seeded with this pass's seed.
    generator = torch.Generator("cpu").manual_seed(int(mask_prompt.seed))
    init = pipe.encode_images([region.init_image], generator)
    repaint = torch.from_numpy(latent_mask(region.mask, width // 8, height // 8))[None, None].to(init.device)
    # An inpainting checkpoint also reads the mask and the masked crop (A1111's img2img conditioning).
    conditioning = None
    if pipe.is_inpainting:
        conditioning = pipe.inpainting_conditioning([region.init_image], [region.mask], generator)
    steps_total, steps_run = inpaint_steps(unit.num_inference_steps, unit.strength)
    options = prompt_options if unit.clip_skip is None else replace(prompt_options, clip_skip=unit.clip_skip)
    request = PassRequest(
        prompts=[prompt],
        negative_prompts=[mask_prompt.negative_prompt],
        width=width,
        height=height,
        sampler=unit.sampler,
        steps_total=steps_total,
        steps_run=steps_run,
        guidance_scale=unit.guidance_scale,
        prompt_options=options,
        shape=PassShape(height, width, steps_total, unit.sampler.choice.second_order),
        noise_multiplier=unit.noise_multiplier,
    )
    noise = replace(target.noise, seeds=(mask_prompt.seed,), subseeds=(mask_prompt.subseed,))
    control = _detail_control(unit, image, mask, make_control, mask_prompt)
    init_latents = InitLatents(init, repaint, conditioning)
    result = run_pass(
        pipe, request, noise, init_latents, on_step, embeddings, control, should_stop=should_stop
    )
    output.add(result)
    decoded = pipe.decode_to_images(result.latents)
    if control is not None:
        decoded = control.postprocess(decoded, width, height)
        output.control_calls += control.model_calls
    (decoded,) = restore_decoded(decoded, restorer, unit.face_restoration, [mask_prompt.seed], target.index, output)
    return region.paste_back(decoded)


def _detail_control(unit: DetailerPlan, image: Image.Image, mask: Image.Image, make_control, mask_prompt):
    """ADetailer's ControlNet units for this inpaint pass, as sd-webui-controlnet sees ADetailer's img2img: a
    unit without an image of its own takes the whole current image (img2img resize mode 0) and, for inpaint
    modules, the mask blurred by `ad_mask_blur`; every unit's inputs are cut to the "only masked" region like
    the pass."""
    if not unit.controlnets:
        return None
    if make_control is None:
        raise RuntimeError("ADetailer's ControlNet needs make_control")
    init = InitPlan(images=(image,), strength=unit.strength, resize_mode=0, mask=mask,
                    mask_blur=(unit.mask_blur, unit.mask_blur), only_masked=unit.only_masked, padding=unit.padding)
    units, _ = with_init_image(unit.controlnets, init, *unit.size)
    return make_control(units, unit.size, mask_prompt.seed + mask_prompt.subseed)
