"""ControlNet units on img2img: the init image and mask stand in for missing inputs, and "only masked"
inpainting cuts every input to the masked region, as sd-webui-controlnet does. No torch."""

import functools
from collections.abc import Sequence
from dataclasses import replace

from PIL import Image

from engine.control.inputs import crop_to_mask_region, processed_mask, to_rgb
from engine.control.modules import MODULES
from engine.control.units import (
    CROP_AND_RESIZE,
    JUST_RESIZE,
    RESIZE_AND_FILL,
    RESIZE_MODES,
    ControlUnit,
    named_choice,
)


def with_init_image(units: Sequence[ControlUnit], init, width: int,
                    height: int) -> tuple[tuple[ControlUnit, ...], list[str]]:
    """img2img (`init`: the plan's `InitPlan`, the pass `width` × `height`): units without an image take the
    first init image in the img2img resize mode, inpaint units the mask (inverted and blurred as A1111 does:
    sd-webui-controlnet `choose_input_image` / `prepare_mask`); under "only masked" inpainting every input is
    cut to the masked region as the pass is (`try_crop_image_with_a1111_mask`, `inpaint_crop_input_image`); and
    with an img2img mask `inpaint_only` runs as `inpaint`. Returns the units and notes for `warnings`."""
    mask = None if init.mask is None else processed_mask(init.mask, init.mask_round, init.invert_mask, init.mask_blur)
    done, notes = [], []
    for unit in units:
        if unit.image is None:
            source = init.images[0]
            fallback = mask if mask is not None else Image.new("L", source.size, 0)
            unit = replace(unit, image=to_rgb(source), resize_mode=named_choice(RESIZE_MODES, min(init.resize_mode, 2), ""),
                           mask=fallback if unit.module.is_inpaint else None)
        # sd-webui-controlnet crops a single input only (`get_control`: a list skips the crop).
        if mask is not None and init.only_masked and unit.crop_to_mask and not unit.extra_images:
            unit = _cropped_to_mask(unit, mask, init.padding, width, height)
        if unit.module.name == "inpaint_only" and mask is not None:
            notes.append(f"{unit.field('module')}: inpaint_only with an img2img mask runs as "
                         "inpaint_global_harmonious, as sd-webui-controlnet does")
            unit = replace(unit, module=MODULES["inpaint"])
        done.append(unit)
    return tuple(done), notes


def _cropped_to_mask(unit: ControlUnit, mask: Image.Image, padding: int, width: int, height: int) -> ControlUnit:
    mode = {JUST_RESIZE: 0, CROP_AND_RESIZE: 1, RESIZE_AND_FILL: 2}[unit.resize_mode]
    cut = functools.partial(crop_to_mask_region, mode=mode, mask=mask, padding=padding, width=width, height=height)
    return replace(unit, image=cut(unit.image), mask=cut(unit.mask) if unit.mask is not None else None)
