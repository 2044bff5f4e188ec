"""ADetailer's `alwayson_scripts` arguments (Bing-su/adetailer v25.3.0): units, the args list, the infotext."""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from engine.detailer.infotext import ADETAILER_VERSION, label_suffix, unit_infotext_params
from engine.detailer.masks import MaskOptions
from engine.errors import RequestError, UnsupportedError, choices
from engine.wire.validation import parse_model


SCRIPT_KEY = "adetailer"  # A1111 matches `alwayson_scripts` keys to script titles case-insensitively
# ADetailer's `ad_max_models` option (default 4): A1111 copies at most 2 + that many request args.
DEFAULT_MAX_MODELS = 4

# Renamed keys still found in payloads and client docs → their current names.
LEGACY_KEYS = {
    "ad_mask_k_largest": "ad_mask_k",  # v24.11.0 (PR #720); "largest" = method "Area", the default
    "ad_conf": "ad_confidence",  # v23.6.0; an integer was a percentage
    "ad_inpaint_full_res": "ad_inpaint_only_masked",  # v23.6.0
    "ad_inpaint_full_res_padding": "ad_inpaint_only_masked_padding",  # v23.6.0
    "ad_tap_enable": "ad_tab_enable",  # a typo shipped for a while
    "ad_enable": "ad_tab_enable",  # the per-unit switch before the leading enable bool (May 2023)
}


def _truncate_float(value: Any) -> Any:
    """pydantic v1 (ADetailer's) turned 4.7 into 4 for an int field; pydantic v2 would reject it."""
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return value


LaxInt = Annotated[int, BeforeValidator(_truncate_float)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class ADetailerUnit(BaseModel):
    """One ADetailer tab (`ADetailerArgs`): every key, ADetailer's default and range, lax coercion as
    ADetailer's pydantic v1 model ("0.5" → 0.5, "yes" → True, 4.7 → 4). Unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, allow_inf_nan=False)

    ad_model: str = "None"
    ad_model_classes: str = ""
    ad_tab_enable: bool = True
    ad_prompt: str = ""
    ad_negative_prompt: str = ""
    ad_confidence: Fraction = 0.3
    ad_mask_filter_method: Literal["Area", "Confidence"] = "Area"
    ad_mask_k: Annotated[LaxInt, Field(ge=0)] = 0
    ad_mask_min_ratio: Fraction = 0.0
    ad_mask_max_ratio: Fraction = 1.0
    ad_dilate_erode: LaxInt = 4
    ad_x_offset: LaxInt = 0
    ad_y_offset: LaxInt = 0
    ad_mask_merge_invert: Literal["None", "Merge", "Merge and Invert"] = "None"
    ad_mask_blur: Annotated[LaxInt, Field(ge=0)] = 4
    ad_denoising_strength: Fraction = 0.4
    ad_inpaint_only_masked: bool = True
    ad_inpaint_only_masked_padding: Annotated[LaxInt, Field(ge=0)] = 32
    ad_use_inpaint_width_height: bool = False
    ad_inpaint_width: Annotated[LaxInt, Field(gt=0)] = 512
    ad_inpaint_height: Annotated[LaxInt, Field(gt=0)] = 512
    ad_use_steps: bool = False
    ad_steps: Annotated[LaxInt, Field(gt=0)] = 28
    ad_use_cfg_scale: bool = False
    ad_cfg_scale: Annotated[float, Field(ge=0.0)] = 7.0
    ad_use_checkpoint: bool = False
    ad_checkpoint: str | None = None
    ad_use_vae: bool = False
    ad_vae: str | None = None
    ad_use_sampler: bool = False
    ad_sampler: str = "DPM++ 2M Karras"
    ad_scheduler: str = "Use same scheduler"
    ad_use_noise_multiplier: bool = False
    ad_noise_multiplier: Annotated[float, Field(ge=0.5, le=1.5)] = 1.0
    ad_use_clip_skip: bool = False
    ad_clip_skip: Annotated[LaxInt, Field(ge=1, le=12)] = 1
    ad_restore_face: bool = False
    ad_controlnet_model: str = "None"
    ad_controlnet_module: str = "None"
    ad_controlnet_weight: Fraction = 1.0
    ad_controlnet_guidance_start: Fraction = 0.0
    ad_controlnet_guidance_end: Fraction = 1.0
    is_api: Any = True  # ADetailer's UI marker; any value is accepted and ignored

    @property
    def is_active(self) -> bool:
        """ADetailer skips a unit whose model is "None" or whose tab is disabled (`need_skip`)."""
        return self.ad_model != "None" and self.ad_tab_enable

    def processing_size(self, width: int, height: int) -> tuple[int, int]:
        """The inpaint size: the unit's own, else the request's *base* size (also under hires fix)."""
        if self.ad_use_inpaint_width_height:
            return self.ad_inpaint_width, self.ad_inpaint_height
        return width, height

    def steps(self, request_steps: int) -> int:
        return self.ad_steps if self.ad_use_steps else request_steps

    def cfg_scale(self, request_cfg_scale: float) -> float:
        return self.ad_cfg_scale if self.ad_use_cfg_scale else request_cfg_scale

    def mask_options(self, sort_by: str = "None") -> MaskOptions:
        """The mask settings; `sort_by` is ADetailer's server option `ad_bbox_sortby`, not a request field."""
        return MaskOptions(
            min_ratio=self.ad_mask_min_ratio, max_ratio=self.ad_mask_max_ratio, top_k=self.ad_mask_k,
            top_k_by=self.ad_mask_filter_method, sort_by=sort_by, x_offset=self.ad_x_offset,
            y_offset=self.ad_y_offset, dilate_erode=self.ad_dilate_erode, merge_invert=self.ad_mask_merge_invert,
        )

    def infotext_params(self, suffix: str = "") -> dict[str, Any]:
        """ADetailer's `extra_params` (see `unit_infotext_params`); empty for a skipped unit."""
        return unit_infotext_params(self, suffix) if self.is_active else {}


@dataclass(frozen=True)
class ADetailerArgs:
    """`alwayson_scripts.ADetailer.args`, parsed: `[enable, skip_img2img, {unit}, {unit}, ...]`."""

    enabled: bool = False
    skip_img2img: bool = False  # img2img only: ADetailer then works on the init image
    units: tuple[ADetailerUnit, ...] = ()  # every unit object, in order (suffixes count skipped ones)
    script_key: str = "ADetailer"  # the `alwayson_scripts` key as sent
    arg_indices: tuple[int, ...] = ()  # where each unit sits in the args list

    def field(self, position: int, key: str) -> str:
        """The request field of `key` in the unit at `position`, for errors found later (an unknown
        `ad_model`): "alwayson_scripts.ADetailer.args[2].ad_model"."""
        return f"alwayson_scripts.{self.script_key}.args[{self.arg_indices[position]}].{key}"

    @property
    def active_units(self) -> tuple[tuple[int, ADetailerUnit], ...]:
        """(position, unit) of the units that run, in order; empty when the script is disabled."""
        if not self.enabled:
            return ()
        return tuple((position, unit) for position, unit in enumerate(self.units) if unit.is_active)

    @property
    def is_active(self) -> bool:
        return bool(self.active_units)

    def infotext_params(self) -> dict[str, Any]:
        """Every unit's infotext params plus "ADetailer version"; empty when ADetailer does nothing."""
        if not self.is_active:
            return {}
        params: dict[str, Any] = {}
        for position, unit in enumerate(self.units):
            params.update(unit.infotext_params(label_suffix(position)))
        params["ADetailer version"] = ADETAILER_VERSION
        return params


def find_script_args(alwayson_scripts: Mapping[str, Any] | None) -> tuple[str, Any] | None:
    """(key as sent, value) of the ADetailer entry of `alwayson_scripts`, matched case-insensitively."""
    found = [(key, value) for key, value in (alwayson_scripts or {}).items() if key.lower() == SCRIPT_KEY]
    if len(found) > 1:
        raise RequestError("alwayson_scripts", f"ADetailer is given twice: {choices(key for key, _ in found)}")
    return found[0] if found else None


def parse_adetailer_args(alwayson_scripts: Mapping[str, Any] | None,
                         max_models: int = DEFAULT_MAX_MODELS) -> ADetailerArgs:
    """Parse the ADetailer entry of `alwayson_scripts` (absent → disabled).

    Semantics follow A1111 + ADetailer: the leading bools are optional (a bare list of units is enabled),
    a missing "args" or `false` disables the script and its units are then not looked at. Unlike ADetailer,
    which silently drops an invalid unit, an invalid or unsupported unit is a `RequestError` naming the key.
    """
    entry = find_script_args(alwayson_scripts)
    if entry is None:
        return ADetailerArgs()
    key, script = entry
    where = f"alwayson_scripts.{key}"
    if not isinstance(script, Mapping):
        raise RequestError(where, f'must be an object like {{"args": [true, false, {{...}}]}}, got {script!r:.60}')
    args = script.get("args", [])
    if not isinstance(args, list):
        raise RequestError(f"{where}.args", f"must be a list, got {type(args).__name__}")
    if len(args) > 2 + max_models:
        raise RequestError(f"{where}.args", f"at most {2 + max_models} entries (2 bools and {max_models} units), "
                                            f"got {len(args)}")
    _check_entry_types(args, f"{where}.args")
    enabled = args[0] if args and isinstance(args[0], bool) else True
    skip_img2img = len(args) >= 2 and isinstance(args[1], bool) and args[1]
    unit_entries = [(index, value) for index, value in enumerate(args) if isinstance(value, dict)]
    if not enabled or not unit_entries:
        return ADetailerArgs(enabled=False, skip_img2img=skip_img2img)
    units = tuple(parse_unit(value, f"{where}.args[{index}]") for index, value in unit_entries)
    for (index, _), unit in zip(unit_entries, units, strict=True):
        if unit.is_active:
            _reject_unsupported(unit, f"{where}.args[{index}]")
    return ADetailerArgs(enabled=True, skip_img2img=skip_img2img, units=units, script_key=key,
                         arg_indices=tuple(index for index, _ in unit_entries))


def _check_entry_types(args: list, where: str) -> None:
    """ADetailer reads bools only at positions 0 and 1 and ignores anything that is not an object; a
    stray entry is almost always a client bug (a string "false" would even *enable* the script)."""
    for index, value in enumerate(args):
        if isinstance(value, dict) or (index < 2 and isinstance(value, bool)):
            continue
        expected = "true/false or a unit object" if index < 2 else "a unit object"
        raise RequestError(f"{where}[{index}]", f"must be {expected}, got {value!r:.60}")


def parse_unit(values: dict[str, Any], where: str = "ADetailer") -> ADetailerUnit:
    """One unit object → `ADetailerUnit`, legacy keys renamed first; errors name `where.<key>`."""
    values = _rename_legacy_keys(values, where)
    unknown = [key for key in values if key not in ADetailerUnit.model_fields]
    if unknown:
        raise RequestError(f"{where}.{unknown[0]}", f"unknown ADetailer argument; ADetailer {ADETAILER_VERSION} "
                                                    f"accepts: {choices(ADetailerUnit.model_fields)}")
    try:
        return parse_model(ADetailerUnit, values, where)
    except RequestError as exc:
        field = exc.field if exc.field == where else f"{where}.{exc.field}"
        raise RequestError(field, exc.message) from None


def _rename_legacy_keys(values: dict[str, Any], where: str) -> dict[str, Any]:
    renamed = dict(values)
    for old, new in LEGACY_KEYS.items():
        if old not in renamed:
            continue
        value = renamed.pop(old)
        if old == "ad_conf":
            value = _legacy_confidence(value)
        if new in renamed and renamed[new] != value:
            raise RequestError(f"{where}.{old}", f"is the old name of {new}, which is also given with another "
                                                 f"value ({renamed[new]!r} vs {value!r}); send only {new}")
        renamed[new] = value
    return renamed


def _legacy_confidence(value: Any) -> Any:
    """ADetailer before v23.6.0: `ad_conf` 30 (an integer, also as a string) meant 0.30; a float was kept."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value / 100.0
    return value


# Features of an active unit this worker does not implement (yet): (key, is requested, message).
_UNSUPPORTED: tuple[tuple[str, Any, str], ...] = (
    ("ad_model_classes", lambda u: bool(u.ad_model_classes.strip()) and "-world" in PurePosixPath(u.ad_model).stem,
     "YOLO-World class prompts need the CLIP text encoder, which is not available offline"),
)


def _reject_unsupported(unit: ADetailerUnit, where: str) -> None:
    for key, is_requested, message in _UNSUPPORTED:
        if is_requested(unit):
            raise UnsupportedError(f"{where}.{key}", message)
