"""ADetailer's ControlNet (`ad_controlnet_*`) as the units its inner img2img pass runs. No torch."""

from collections.abc import Sequence
from dataclasses import replace

from engine.control.units import ControlUnit, UnitArgs, resolve_unit
from engine.errors import UnsupportedError
from engine.wire.validation import parse_model


# ADetailer `controlnet_ext/common.py` `cn_model_module`: the module a model name implies when none is given.
ADETAILER_MODULE_OF_MODEL = {"inpaint": "inpaint_global_harmonious", "scribble": "t2ia_sketch_pidi",
                             "lineart": "lineart_coarse", "openpose": "openpose_full", "tile": "tile_resample",
                             "depth": "depth_midas"}


PASSTHROUGH = "Passthrough"


def detailer_controlnets(args, model_field: str, request_units: Sequence[ControlUnit]) -> tuple[ControlUnit, ...]:
    """ADetailer's `ad_controlnet_*`: the units ADetailer's inner img2img runs (none for "None").

    A model name gives the one unit ADetailer hands sd-webui-controlnet (`update_scripts_args`): Balanced, pixel
    perfect, no image (the inpaint pass's image and mask are used). "Passthrough" keeps the request's own units
    (`request_units`, before img2img filled in their images) in the inner pass, as ADetailer leaves the script's
    args untouched (ADetailer `scripts/!adetailer.py` `get_i2i_p`, AGPL-3.0): a unit without an image of its own
    then takes the inner pass's image and mask, and every unit is cut to the "only masked" region like the pass.
    """
    model = args.ad_controlnet_model
    if model in ("None", "", None):
        return ()
    if model == PASSTHROUGH:
        embedding = next((unit for unit in request_units if unit.is_face_embedding or unit.is_image_prompt), None)
        if embedding is not None:
            raise UnsupportedError(model_field, f"\"Passthrough\" with an IP-Adapter unit "
                                                f"({embedding.field('module')}) is not supported in ADetailer's pass")
        return tuple(request_units)
    module = args.ad_controlnet_module
    if module in ("None", "", None):
        module = next((name for key, name in ADETAILER_MODULE_OF_MODEL.items() if key in model), "none")
    where = model_field.removesuffix("_model")
    raw = parse_model(UnitArgs, {"module": module, "model": model, "weight": args.ad_controlnet_weight,
                                 "guidance_start": args.ad_controlnet_guidance_start,
                                 "guidance_end": args.ad_controlnet_guidance_end, "pixel_perfect": True},
                      where)
    (unit,) = resolve_unit(raw, 0, where, img2img=True)  # no image: one unit
    unit = replace(unit, where=where)
    if unit.is_face_embedding or unit.is_image_prompt:
        raise UnsupportedError(f"{where}_module", "a face-embedding (IP-Adapter) module cannot run in ADetailer")
    return (unit,)
