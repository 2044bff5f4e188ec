"""ADetailer's infotext keys (`_all_args` labels, `extra_params` pop rules, ordinal suffixes), v25.3.0."""

from typing import Any


ADETAILER_VERSION = "25.3.0"

# ADetailer `_all_args`: (key, infotext label), in infotext order.
INFOTEXT_LABELS: tuple[tuple[str, str], ...] = (
    ("ad_model", "ADetailer model"),
    ("ad_model_classes", "ADetailer model classes"),
    ("ad_tab_enable", "ADetailer tab enable"),
    ("ad_prompt", "ADetailer prompt"),
    ("ad_negative_prompt", "ADetailer negative prompt"),
    ("ad_confidence", "ADetailer confidence"),
    ("ad_mask_filter_method", "ADetailer method to decide top k masks"),
    ("ad_mask_k", "ADetailer mask only top k"),
    ("ad_mask_min_ratio", "ADetailer mask min ratio"),
    ("ad_mask_max_ratio", "ADetailer mask max ratio"),
    ("ad_x_offset", "ADetailer x offset"),
    ("ad_y_offset", "ADetailer y offset"),
    ("ad_dilate_erode", "ADetailer dilate erode"),
    ("ad_mask_merge_invert", "ADetailer mask merge invert"),
    ("ad_mask_blur", "ADetailer mask blur"),
    ("ad_denoising_strength", "ADetailer denoising strength"),
    ("ad_inpaint_only_masked", "ADetailer inpaint only masked"),
    ("ad_inpaint_only_masked_padding", "ADetailer inpaint padding"),
    ("ad_use_inpaint_width_height", "ADetailer use inpaint width height"),
    ("ad_inpaint_width", "ADetailer inpaint width"),
    ("ad_inpaint_height", "ADetailer inpaint height"),
    ("ad_use_steps", "ADetailer use separate steps"),
    ("ad_steps", "ADetailer steps"),
    ("ad_use_cfg_scale", "ADetailer use separate CFG scale"),
    ("ad_cfg_scale", "ADetailer CFG scale"),
    ("ad_use_checkpoint", "ADetailer use separate checkpoint"),
    ("ad_checkpoint", "ADetailer checkpoint"),
    ("ad_use_vae", "ADetailer use separate VAE"),
    ("ad_vae", "ADetailer VAE"),
    ("ad_use_sampler", "ADetailer use separate sampler"),
    ("ad_sampler", "ADetailer sampler"),
    ("ad_scheduler", "ADetailer scheduler"),
    ("ad_use_noise_multiplier", "ADetailer use separate noise multiplier"),
    ("ad_noise_multiplier", "ADetailer noise multiplier"),
    ("ad_use_clip_skip", "ADetailer use separate CLIP skip"),
    ("ad_clip_skip", "ADetailer CLIP skip"),
    ("ad_restore_face", "ADetailer restore face"),
    ("ad_controlnet_model", "ADetailer ControlNet model"),
    ("ad_controlnet_module", "ADetailer ControlNet module"),
    ("ad_controlnet_weight", "ADetailer ControlNet weight"),
    ("ad_controlnet_guidance_start", "ADetailer ControlNet guidance start"),
    ("ad_controlnet_guidance_end", "ADetailer ControlNet guidance end"),
)

_FALSY = object()
_CONTROLNET = ("ADetailer ControlNet model", "ADetailer ControlNet module", "ADetailer ControlNet weight",
               "ADetailer ControlNet guidance start", "ADetailer ControlNet guidance end")
# ADetailer `ppop` calls, in order: (label, labels popped (None = the label itself), pop when equal to / falsy).
_POP_RULES: tuple[tuple[str, tuple[str, ...] | None, Any], ...] = (
    ("ADetailer model classes", None, _FALSY),
    ("ADetailer prompt", None, _FALSY),
    ("ADetailer negative prompt", None, _FALSY),
    ("ADetailer mask only top k", ("ADetailer mask only top k", "ADetailer method to decide top k masks"), 0),
    ("ADetailer mask min ratio", None, 0.0),
    ("ADetailer mask max ratio", None, 1.0),
    ("ADetailer x offset", None, 0),
    ("ADetailer y offset", None, 0),
    ("ADetailer mask merge invert", None, "None"),
    ("ADetailer inpaint only masked", ("ADetailer inpaint padding",), _FALSY),
    ("ADetailer use inpaint width height",
     ("ADetailer use inpaint width height", "ADetailer inpaint width", "ADetailer inpaint height"), _FALSY),
    ("ADetailer use separate steps", ("ADetailer use separate steps", "ADetailer steps"), _FALSY),
    ("ADetailer use separate CFG scale", ("ADetailer use separate CFG scale", "ADetailer CFG scale"), _FALSY),
    ("ADetailer use separate checkpoint", ("ADetailer use separate checkpoint", "ADetailer checkpoint"), _FALSY),
    ("ADetailer use separate VAE", ("ADetailer use separate VAE", "ADetailer VAE"), _FALSY),
    ("ADetailer use separate sampler",
     ("ADetailer use separate sampler", "ADetailer sampler", "ADetailer scheduler"), _FALSY),
    ("ADetailer scheduler", None, "Use same scheduler"),
    ("ADetailer use separate noise multiplier",
     ("ADetailer use separate noise multiplier", "ADetailer noise multiplier"), _FALSY),
    ("ADetailer use separate CLIP skip", ("ADetailer use separate CLIP skip", "ADetailer CLIP skip"), _FALSY),
    ("ADetailer restore face", None, _FALSY),
    ("ADetailer ControlNet model", _CONTROLNET, "None"),
    ("ADetailer ControlNet module", None, "None"),
    ("ADetailer ControlNet weight", None, 1.0),
    ("ADetailer ControlNet guidance start", None, 0.0),
    ("ADetailer ControlNet guidance end", None, 1.0),
)


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th… 11th, 12th, 13th, 21st."""
    ending = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{ending}"


def label_suffix(position: int) -> str:
    """The infotext suffix of the unit at `position` (0-based): "" for the first, " 2nd" for the second…"""
    return "" if position == 0 else f" {ordinal(position + 1)}"


def unit_infotext_params(unit: Any, suffix: str = "") -> dict[str, Any]:
    """ADetailer's `extra_params` for one unit: labelled values in `_all_args` order, defaults popped as
    ADetailer pops them, each label followed by `suffix` (" 2nd", " 3rd"… for later units)."""
    params = {label: getattr(unit, key) for key, label in INFOTEXT_LABELS}
    params.pop("ADetailer tab enable")
    for key, popped, condition in _POP_RULES:
        if key in params and (not params[key] if condition is _FALSY else params[key] == condition):
            for label in popped or (key,):
                params.pop(label, None)
    return {label + suffix: value for label, value in params.items()}
