"""The `alwayson_scripts.controlnet` arguments: unit dicts as sd-webui-controlnet and Forge accept them. No torch."""

import base64
import binascii
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field

from engine.control.modules import FACE_EMBEDDING, ModuleSpec, find_module
from engine.errors import RequestError, UnsupportedError, choices
from engine.wire.validation import parse_model


logger = logging.getLogger(__name__)

SCRIPT_KEY = "controlnet"  # A1111 matches `alwayson_scripts` keys to script titles case-insensitively
NO_MODEL = "none"

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL = "Just Resize", "Crop and Resize", "Resize and Fill"
BALANCED, PROMPT_MORE_IMPORTANT, CONTROL_MORE_IMPORTANT = (
    "Balanced", "My prompt is more important", "ControlNet is more important")
HR_BOTH, HR_LOW_RES_ONLY, HR_HIGH_RES_ONLY = "Both", "Low res only", "High res only"

# Accepted spellings (lower case) and integers → canonical value. sd-webui-controlnet `ResizeMode` plus the
# aliases of its `check_resize_mode`; `resize_mode_from_value` maps 3 (A1111's latent "Just resize") to 0.
RESIZE_MODES: dict[Any, str] = {
    0: JUST_RESIZE, 1: CROP_AND_RESIZE, 2: RESIZE_AND_FILL, 3: JUST_RESIZE,
    "just resize": JUST_RESIZE, "crop and resize": CROP_AND_RESIZE, "resize and fill": RESIZE_AND_FILL,
    "inner fit (scale to fit)": CROP_AND_RESIZE, "scale to fit (inner fit)": CROP_AND_RESIZE,
    "outer fit (shrink to fit)": RESIZE_AND_FILL, "envelope (outer fit)": RESIZE_AND_FILL,
}
# sd-webui-controlnet `ControlMode`; integers as its older API and Forge's `control_mode_from_value` take them.
CONTROL_MODES: dict[Any, str] = {
    0: BALANCED, 1: PROMPT_MORE_IMPORTANT, 2: CONTROL_MORE_IMPORTANT,
    "balanced": BALANCED, "my prompt is more important": PROMPT_MORE_IMPORTANT,
    "controlnet is more important": CONTROL_MORE_IMPORTANT,
}
HR_OPTIONS: dict[Any, str] = {
    0: HR_BOTH, 1: HR_LOW_RES_ONLY, 2: HR_HIGH_RES_ONLY,
    "both": HR_BOTH, "low res only": HR_LOW_RES_ONLY, "high res only": HR_HIGH_RES_ONLY,
}
# sd-webui-controlnet `ControlNetUnit.legacy_field_alias` (+ Forge's `mask_image`): old key → current key.
LEGACY_KEYS = {"input_image": "image", "guidance": "guidance_end", "lowvram": "low_vram", "mask_image": "mask"}


class UnitArgs(BaseModel):
    """One unit dict with sd-webui-controlnet's keys and defaults. `enabled` defaults to True as in Forge (the
    InstantID payloads omit it; current sd-webui-controlnet would silently skip such a unit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    module: str = "none"
    model: str | None = "None"
    weight: float = Field(1.0, ge=0.0)  # Forge has no upper bound; sd-webui-controlnet stops at 2
    image: Any = None
    mask: Any = None
    resize_mode: str | int = CROP_AND_RESIZE
    low_vram: bool = False  # memory offloading only: no effect here
    processor_res: float = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0)
    pixel_perfect: bool = False
    control_mode: str | int = BALANCED
    hr_option: str | int = HR_BOTH
    save_detected_map: bool = True
    # Features this worker does not implement: accepted only when unset.
    advanced_weighting: list[float] | None = None
    effective_region_mask: Any = None
    ipadapter_input: Any = None
    # UI state and img2img-only switches the web UIs send along; they change nothing in txt2img.
    is_ui: Any = None
    input_mode: Any = None
    batch_images: Any = None
    batch_image_dir: Any = None
    batch_mask_dir: Any = None
    batch_input_gallery: Any = None
    batch_mask_gallery: Any = None
    generated_image: Any = None
    use_preview_as_input: Any = None
    output_dir: Any = None
    loopback: Any = None
    inpaint_crop_input_image: Any = None
    pulid_mode: Any = None
    union_control_type: Any = None


@dataclass(frozen=True)
class ControlUnit:
    """An enabled unit, validated and resolved: canonical names, slider defaults applied, images decoded."""

    index: int  # position in `args`, for error messages
    module: ModuleSpec
    model: str  # as sent; resolved against the models folder later
    weight: float
    image: Image.Image  # RGB
    resize_mode: str
    processor_res: int
    threshold_a: float
    threshold_b: float
    guidance_start: float
    guidance_end: float
    pixel_perfect: bool
    control_mode: str
    hr_option: str
    save_detected_map: bool

    def field(self, key: str) -> str:
        return f"alwayson_scripts.{SCRIPT_KEY}.args[{self.index}].{key}"

    @property
    def is_face_embedding(self) -> bool:
        return self.module.output == FACE_EMBEDDING

    @property
    def is_instant_id_controlnet(self) -> bool:
        """sd-webui-controlnet types a ControlNet as InstantID by "instant_id" in its file name; the keypoint
        module says the same."""
        return not self.is_face_embedding and (
            self.module.name == "instant_id_face_keypoints" or "instant_id" in self.model.lower())

    def runs_in(self, hires: bool) -> bool:
        """sd-webui-controlnet `hr_option`: which passes of hires fix the unit takes part in."""
        return self.hr_option == HR_BOTH or self.hr_option == (HR_HIGH_RES_ONLY if hires else HR_LOW_RES_ONLY)


def parse_controlnet_args(alwayson_scripts: Mapping[str, Any] | None) -> tuple[ControlUnit, ...]:
    """The enabled units of `alwayson_scripts.controlnet.args` (absent → none), in order.

    A unit is skipped when `enabled` is false, or when it is an empty tab (module "none", model "None").

    Raises:
        RequestError: a malformed unit, naming `alwayson_scripts.controlnet.args[i].<key>`.
        NotFoundError: an unknown module, listing the supported ones.
    """
    found = [(key, value) for key, value in (alwayson_scripts or {}).items() if key.lower() == SCRIPT_KEY]
    if not found:
        return ()
    if len(found) > 1:
        raise RequestError("alwayson_scripts", f"ControlNet is given twice: {choices(k for k, _ in found)}")
    key, script = found[0]
    where = f"alwayson_scripts.{key}"
    args = script.get("args", []) if isinstance(script, Mapping) else script
    if not isinstance(args, list):
        raise RequestError(f"{where}.args", f"must be a list of unit objects, got {type(args).__name__}")
    units = []
    for index, entry in enumerate(args):
        field = f"{where}.args[{index}]"
        if not isinstance(entry, Mapping):
            raise RequestError(field, f"must be a unit object, got {entry!r:.60}")
        raw = parse_model(UnitArgs, _with_current_keys(entry, field), field)
        if _is_active(raw):
            units.append(_resolve(raw, index, field))
    _check_instant_id(units)
    return tuple(units)


def _with_current_keys(entry: Mapping[str, Any], field: str) -> dict[str, Any]:
    """Legacy keys under their current names. Both spellings with the same value are fine (the InstantID
    payloads send `guidance` and `guidance_end` alike); different values are an error, as in
    sd-webui-controlnet (Forge silently ignores the legacy key)."""
    values = dict(entry)
    for old, new in LEGACY_KEYS.items():
        if old not in values:
            continue
        legacy = values.pop(old)
        if values.get(new) not in (None, "") and values[new] != legacy:
            raise RequestError(f"{field}.{old}", f"conflicts with {new!r} ({legacy!r} vs {values[new]!r}); "
                                                 f"send only {new!r}")
        if values.get(new) in (None, ""):
            values[new] = legacy
    return values


def _is_active(raw: UnitArgs) -> bool:
    empty_tab = raw.module.strip().lower() in ("none", "") and _no_model(raw.model)
    return raw.enabled and not empty_tab


def _no_model(model: str | None) -> bool:
    return model is None or model.strip().lower() in (NO_MODEL, "")


def _resolve(raw: UnitArgs, index: int, field: str) -> ControlUnit:
    module = find_module(raw.module, f"{field}.module")
    for key in ("advanced_weighting", "effective_region_mask", "ipadapter_input"):
        if getattr(raw, key) not in (None, "", []):
            raise UnsupportedError(f"{field}.{key}", "is not supported; leave it unset")
    if _no_model(raw.model):
        raise RequestError(f"{field}.model", f"module {module.name!r} needs a model (got {raw.model!r})")
    if raw.guidance_start > raw.guidance_end:
        raise RequestError(f"{field}.guidance_start",
                           f"must not exceed guidance_end ({raw.guidance_start} > {raw.guidance_end})")
    images = _decode_images(raw.image, raw.mask, f"{field}.image")
    if not images:
        raise RequestError(f"{field}.image", "is required: txt2img has no init image to fall back on")
    if len(images) > 1:
        raise UnsupportedError(f"{field}.image", "one image per unit (several images for one IP-Adapter, which "
                                                 "sd-webui-controlnet averages, are not supported)")
    return ControlUnit(
        index=index,
        module=module,
        model=str(raw.model).strip(),
        weight=raw.weight,
        image=images[0],
        resize_mode=_named(RESIZE_MODES, raw.resize_mode, f"{field}.resize_mode"),
        processor_res=int(module.resolution.pick(raw.processor_res) if module.resolution else raw.processor_res),
        threshold_a=module.threshold_a.pick(raw.threshold_a) if module.threshold_a else raw.threshold_a,
        threshold_b=module.threshold_b.pick(raw.threshold_b) if module.threshold_b else raw.threshold_b,
        guidance_start=raw.guidance_start,
        guidance_end=raw.guidance_end,
        pixel_perfect=raw.pixel_perfect,
        control_mode=_named(CONTROL_MODES, raw.control_mode, f"{field}.control_mode"),
        hr_option=_named(HR_OPTIONS, raw.hr_option, f"{field}.hr_option"),
        save_detected_map=raw.save_detected_map,
    )


def _named(table: Mapping[Any, str], value: str | int, field: str) -> str:
    key = value.strip().lower() if isinstance(value, str) else value
    if key not in table:
        names = sorted({name for name in table.values()})
        raise RequestError(field, f"unknown value {value!r}; valid: {choices(names)} or their numbers")
    return table[key]


def _decode_images(image: Any, mask: Any, field: str) -> tuple[Image.Image, ...]:
    """sd-webui-controlnet `get_input_images_rgba`: a base64 string, {"image", "mask"}, [image, mask], or a list
    of {"image", "mask"} (several inputs for one IP-Adapter). Masks only matter for inpainting, not supported."""
    if image is None or image == "":
        entries = []
    elif isinstance(image, str):
        entries = [{"image": image, "mask": mask}]
    elif isinstance(image, Mapping):
        entries = [image]
    elif isinstance(image, list) and image and all(isinstance(item, Mapping) for item in image):
        entries = image
    elif isinstance(image, list) and len(image) == 2 and isinstance(image[0], str):
        entries = [{"image": image[0], "mask": image[1]}]
    else:
        raise RequestError(field, 'must be a base64 image, {"image": ..., "mask": ...}, or a list of those')
    decoded = []
    for number, entry in enumerate(entries):
        where = field if len(entries) == 1 else f"{field}[{number}]"
        if entry.get("mask") not in (None, ""):
            raise UnsupportedError(f"{where}.mask", "masks are used only by inpainting modules, not supported")
        decoded.append(decode_base64_image(entry.get("image"), where))
    return tuple(decoded)


def decode_base64_image(text: Any, field: str) -> Image.Image:
    """A1111 `decode_base64_to_image`: base64 with or without a `data:image/...;base64,` prefix, EXIF
    rotation applied, as RGB (ControlNet's `HWC3` drops alpha)."""
    if not isinstance(text, str) or not text:
        raise RequestError(field, "must be a base64-encoded image")
    if text.startswith(("http://", "https://")):
        raise UnsupportedError(field, "image URLs are not fetched; send the image itself, base64-encoded")
    if text.startswith("data:image/"):
        text = text.partition(",")[2]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(text)))
        image.load()
    except (binascii.Error, ValueError, OSError) as exc:
        raise RequestError(field, f"is not a base64-encoded image ({exc})") from None
    return ImageOps.exif_transpose(image).convert("RGB")


def _check_instant_id(units: list[ControlUnit]) -> None:
    """sd-webui-controlnet feeds an InstantID ControlNet the face tokens of the IP-Adapter unit: one such unit
    must be there (in any order here; sd-webui-controlnet wants it right before)."""
    embeddings = [unit for unit in units if unit.is_face_embedding]
    if len(embeddings) > 1:
        raise UnsupportedError(embeddings[1].field("module"), "only one face-embedding (IP-Adapter) unit per request")
    needing = next((unit for unit in units if unit.is_instant_id_controlnet), None)
    if needing is not None and not embeddings:
        raise RequestError(needing.field("model"), "an InstantID ControlNet needs an 'instant_id_face_embedding' "
                                                   "(\"InsightFace (InstantID)\") unit with the InstantID IP-Adapter")
