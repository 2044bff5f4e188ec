"""X/Y/Z plot's axis types: what each does to a request, how its values are written and labelled.

The table follows AUTOMATIC1111/stable-diffusion-webui v1.10 `scripts/xyz_grid.py` `axis_options` (AGPL-3.0,
written anew here), in its order, because clients pick an axis by its index in the tab's list (txt2img lists
the txt2img-only axes, img2img the img2img-only ones). Each axis becomes changes to the request's fields;
axes whose setting this worker does not have are refused when used. Value lists accept A1111's ranges:
`1-5` (every integer), `1-10 (+3)` (a step), `0-1 [5]` (a count, evenly spaced). No torch.
"""

import csv
import io
import itertools
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import numpy as np

from engine.errors import RequestError, UnsupportedError


SEED_RANGE = 4294967294  # A1111 `random.randrange(4294967294)` for a seed of -1

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*\d+(?:.\d*)?"
RANGE = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\(([+-]\d+)\s*\))?\s*")
RANGE_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
RANGE_COUNT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\[(\d+)\s*])?\s*")
RANGE_COUNT_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\[(\d+(?:.\d*)?)\s*])?\s*")

Changes = dict[str, Any]


@dataclass(frozen=True)
class Axis:
    """One axis type. `apply(request, value, all_values)` gives the request fields to change."""

    label: str
    kind: str  # "int", "float", "str" or "permutations"
    apply: Callable[[Any, Any, list[Any]], Changes]
    label_style: str = "label"  # "label" ("Seed: 5"), "value", "path" (file name), "list", "none"
    tab: str | None = None  # "txt2img" or "img2img" for axes of one tab only
    cost: float = 0.0  # costlier axes change in the outer loop (a checkpoint switch)
    has_choices: bool = False  # A1111 shows a dropdown (values come from `<axis> values` list)
    unsupported: str | None = None

    def format(self, value: Any) -> str:
        """A1111's legend text for one value."""
        if isinstance(value, float):
            value = round(value, 8)
        if self.label_style == "none":
            return ""
        if self.label_style == "value":
            return str(value)
        if self.label_style == "path":
            return PurePath(str(value)).name
        if self.label_style == "list":
            return ", ".join(value)
        return f"{self.label}: {value}"


def field(name: str) -> Callable[[Any, Any, list[Any]], Changes]:
    return lambda request, value, values: {name: value}


def override(name: str, boolean: bool = False) -> Callable[[Any, Any, list[Any]], Changes]:
    def apply(request, value, values) -> Changes:
        if boolean:
            value = str(value).lower() == "true"
        return {"override_settings": {**(request.override_settings or {}), name: value}}

    return apply


def _replace_in(prompt, old: str, new: str):
    if isinstance(prompt, list):
        return [text.replace(old, new) for text in prompt]
    return (prompt or "").replace(old, new)


def _contains(prompt, text: str) -> bool:
    return any(text in item for item in prompt) if isinstance(prompt, list) else text in (prompt or "")


def prompt_search_replace(request, value: str, values: list[str]) -> Changes:
    """Prompt S/R: the first value is searched for in the prompt and negative prompt, each value replaces it."""
    if not _contains(request.prompt, values[0]) and not _contains(request.negative_prompt, values[0]):
        raise RequestError("script_args", f"Prompt S/R did not find {values[0]} in prompt or negative prompt.")
    return {"prompt": _replace_in(request.prompt, values[0], value),
            "negative_prompt": _replace_in(request.negative_prompt, values[0], value)}


def prompt_order(request, order: tuple[str, ...], values) -> Changes:
    """Prompt order: the tokens put back in the prompt in this permutation's order (A1111 `apply_order`)."""
    prompt = request.prompt if isinstance(request.prompt, str) else request.prompt[0]
    positions = sorted((prompt.find(token), token) for token in order)
    parts = []
    for _, token in positions:
        found = prompt.find(token)
        parts.append(prompt[:found])
        prompt = prompt[found + len(token):]
    return {"prompt": "".join(part + order[index] for index, part in enumerate(parts)) + prompt}


def styles(request, value: str, values) -> Changes:
    return {"styles": [*(request.styles or []), *value.split(",")]}


def vae(request, value: str, values) -> Changes:
    """A1111 `find_vae`: "auto"/"automatic" → Automatic, "none" → None, else the VAE of that name."""
    name = value.strip()
    lowered = name.lower()
    chosen = "Automatic" if lowered in ("auto", "automatic") else "None" if lowered == "none" else name
    return {"override_settings": {**(request.override_settings or {}), "sd_vae": chosen}}


def checkpoint(request, value: str, values) -> Changes:
    return {"override_settings": {**(request.override_settings or {}), "sd_model_checkpoint": value}}


def face_restore(request, value: str, values) -> Changes:
    lowered = value.lower()
    if lowered in ("codeformer", "gfpgan"):
        model = "CodeFormer" if lowered == "codeformer" else "GFPGAN"
        return {"restore_faces": True,
                "override_settings": {**(request.override_settings or {}), "face_restoration_model": model}}
    return {"restore_faces": lowered in ("true", "yes", "y", "1")}


def size(request, value: str, values) -> Changes:
    width, _, height = value.partition("x")
    try:
        return {"width": int(width.strip()), "height": int(height.strip())}
    except ValueError:
        # A1111 prints "Invalid size in XYZ plot" and keeps the size.
        return {}


def nothing(request, value, values) -> Changes:
    return {}


def _unsupported(reason: str) -> Callable[[Any, Any, list[Any]], Changes]:
    def apply(request, value, values) -> Changes:
        raise UnsupportedError("script_args", reason)

    return apply


def _refused(label: str, kind: str, reason: str, tab: str | None = None) -> Axis:
    return Axis(label, kind, _unsupported(f"X/Y/Z axis {label!r}: {reason}"), tab=tab, unsupported=reason)


NO_SETTING = "this worker has no such setting"

AXES: tuple[Axis, ...] = (
    Axis("Nothing", "str", nothing, label_style="none"),
    Axis("Seed", "int", field("seed")),
    Axis("Var. seed", "int", field("subseed")),
    Axis("Var. strength", "float", field("subseed_strength")),
    Axis("Steps", "int", field("steps")),
    Axis("Hires steps", "int", field("hr_second_pass_steps"), tab="txt2img"),
    Axis("CFG Scale", "float", field("cfg_scale")),
    Axis("Image CFG Scale", "float", field("image_cfg_scale"), tab="img2img"),
    Axis("Prompt S/R", "str", prompt_search_replace, label_style="value"),
    Axis("Prompt order", "permutations", prompt_order, label_style="list"),
    Axis("Sampler", "str", field("sampler_name"), label_style="value", tab="txt2img", has_choices=True),
    Axis("Hires sampler", "str", field("hr_sampler_name"), tab="txt2img", has_choices=True),
    Axis("Sampler", "str", field("sampler_name"), label_style="value", tab="img2img", has_choices=True),
    Axis("Checkpoint name", "str", checkpoint, label_style="path", cost=1.0, has_choices=True),
    Axis("Negative Guidance minimum sigma", "float", field("s_min_uncond")),
    Axis("Sigma Churn", "float", field("s_churn")),
    Axis("Sigma min", "float", field("s_tmin")),
    Axis("Sigma max", "float", field("s_tmax")),
    Axis("Sigma noise", "float", field("s_noise")),
    Axis("Schedule type", "str", field("scheduler"), has_choices=True),
    Axis("Schedule min sigma", "float", override("sigma_min")),
    Axis("Schedule max sigma", "float", override("sigma_max")),
    Axis("Schedule rho", "float", override("rho")),
    _refused("Beta schedule alpha", "float", NO_SETTING + " (beta_dist_alpha)"),
    _refused("Beta schedule beta", "float", NO_SETTING + " (beta_dist_beta)"),
    Axis("Eta", "float", field("eta")),
    Axis("Clip skip", "int", override("CLIP_stop_at_last_layers")),
    Axis("Denoising", "float", field("denoising_strength")),
    Axis("Initial noise multiplier", "float", override("initial_noise_multiplier")),
    _refused("Extra noise", "float", NO_SETTING + " (img2img_extra_noise)"),
    Axis("Hires upscaler", "str", field("hr_upscaler"), tab="txt2img", has_choices=True),
    _refused("Cond. Image Mask Weight", "float", NO_SETTING + " (inpainting_mask_weight)", tab="img2img"),
    Axis("VAE", "str", vae, cost=0.7, has_choices=True),
    Axis("Styles", "str", styles, has_choices=True),
    _refused("UniPC Order", "int", NO_SETTING + " (uni_pc_order)"),
    Axis("Face restore", "str", face_restore, label_style="value"),
    _refused("Token merging ratio", "float", "token merging is not supported"),
    _refused("Token merging ratio high-res", "float", "token merging is not supported"),
    Axis("Always discard next-to-last sigma", "str", override("always_discard_next_to_last_sigma", True),
         has_choices=True),
    _refused("SGM noise multiplier", "str", NO_SETTING + " (sgm_noise_multiplier)"),
    Axis("Refiner checkpoint", "str", field("refiner_checkpoint"), label_style="path", cost=1.0,
         has_choices=True),
    Axis("Refiner switch at", "float", field("refiner_switch_at")),
    Axis("RNG source", "str", override("randn_source"), has_choices=True),
    _refused("FP8 mode", "str", "fp8 weight storage is not supported"),
    Axis("Size", "str", size),
)


def tab_axes(img2img: bool) -> list[Axis]:
    """The axis list of one tab, in A1111's order: indices into it are what clients send as axis types."""
    tab = "img2img" if img2img else "txt2img"
    return [axis for axis in AXES if axis.tab in (None, tab)]


def find_axis(value: Any, img2img: bool, where: str) -> Axis:
    """An axis by index (what A1111 takes) or by label (case-insensitive; a convenience A1111 lacks)."""
    axes = tab_axes(img2img)
    if value is None or value == "":
        return axes[0]
    if isinstance(value, int | float) and not isinstance(value, bool):
        if 0 <= int(value) < len(axes):
            return axes[int(value)]
    elif isinstance(value, str):
        if value.strip().isdigit() and int(value) < len(axes):
            return axes[int(value)]
        found = [axis for axis in axes if axis.label.lower() == value.strip().lower()]
        if found:
            return found[0]
    listed = ", ".join(f"{index} {axis.label}" for index, axis in enumerate(axes))
    raise RequestError(where, f"must be an axis index or name of this tab ({listed}), got {value!r:.40}")


def split_values(text: str) -> list[str]:
    """A1111 `csv_string_to_list_strip`: comma-separated, CSV quoting honoured, each value trimmed."""
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    return [value.strip() for value in itertools.chain.from_iterable(rows)]


def _expand_ints(values: list[str], check: Callable[[int], None]) -> list[Any]:
    expanded: list[Any] = []
    for value in values:
        if not value.strip():
            continue
        stepped, counted = RANGE.fullmatch(value), RANGE_COUNT.fullmatch(value)
        if stepped:
            step = int(stepped[3]) if stepped[3] else 1
            span = range(int(stepped[1].replace(" ", "")), int(stepped[2].replace(" ", "")) + 1, step)
            check(len(expanded) + len(span))
            expanded += span
        elif counted:
            count = int(counted[3]) if counted[3] else 1
            check(len(expanded) + count)
            start, stop = int(counted[1].replace(" ", "")), int(counted[2].replace(" ", ""))
            expanded += [int(x) for x in np.linspace(start, stop, count).tolist()]
        else:
            expanded.append(value)
    return expanded


def _expand_floats(values: list[str], check: Callable[[int], None]) -> list[Any]:
    expanded: list[Any] = []
    for value in values:
        if not value.strip():
            continue
        stepped, counted = RANGE_FLOAT.fullmatch(value), RANGE_COUNT_FLOAT.fullmatch(value)
        if stepped:
            start, stop = float(stepped[1].replace(" ", "")), float(stepped[2].replace(" ", ""))
            step = float(stepped[3]) if stepped[3] else 1.0
            if step != 0 and math.isfinite(step):
                check(len(expanded) + max(0, math.ceil((stop + step - start) / step)))
            expanded += np.arange(start, stop + step, step).tolist()
        elif counted:
            start, stop = float(counted[1].replace(" ", "")), float(counted[2].replace(" ", ""))
            count = int(counted[3]) if counted[3] else 1
            check(len(expanded) + count)
            expanded += np.linspace(start, stop, count).tolist()
        else:
            expanded.append(value)
    return expanded


def axis_values(axis: Axis, text: str, listed: list[str] | None, where: str,
                max_values: int | None = None) -> list[Any]:
    """An axis's values from its text (or, for a dropdown axis, its list), ranges expanded, typed; at most
    `max_values` of them, counted before a range is expanded.

    A1111 reads a dropdown axis only from its list unless "Use text inputs" is on; here the list is used when
    given and the text otherwise, so either way of sending values works.
    """
    if axis.label == "Nothing":
        return [0]

    def check(count: int) -> None:
        if max_values is not None and count > max_values:
            raise RequestError(where, f"the {axis.label} axis has {count} values; at most {max_values} accepted")

    values = [str(value) for value in listed] if listed else split_values(text or "")
    check(len(values))
    try:
        if axis.kind == "int":
            values = _expand_ints(values, check)
        elif axis.kind == "float":
            values = _expand_floats(values, check)
        elif axis.kind == "permutations":
            check(math.perm(len(values)))
            return list(itertools.permutations(values))
    except (ValueError, ZeroDivisionError) as exc:
        raise RequestError(where, f"{axis.label} values: {exc}") from None
    convert = {"int": int, "float": float, "str": str}[axis.kind]
    try:
        typed = [convert(value) for value in values]
    except ValueError as exc:
        raise RequestError(where, f"{axis.label} values: {exc}") from None
    if not typed:
        raise RequestError(where, f"no values for the {axis.label} axis")
    return typed


def fix_seeds(axis: Axis, values: list[Any]) -> list[Any]:
    """A1111 `fix_axis_seeds`: -1 on a seed axis becomes one random seed, so the grid can be reproduced."""
    if axis.label not in ("Seed", "Var. seed"):
        return values
    return [random.randrange(SEED_RANGE) if value in (None, "", -1) else value for value in values]
