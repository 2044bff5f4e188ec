"""The `alwayson_scripts.controlnet` arguments: unit dicts as sd-webui-controlnet and Forge accept them. No torch."""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from engine.control.inputs import decode_unit_images
from engine.control.ip_adapters import AUTO_MODULE, auto_module
from engine.control.modules import FACE_EMBEDDING, IMAGE_PROMPT, MODULES, UNION_TYPES, ModuleSpec, find_module
from engine.errors import RequestError, UnsupportedError, choices
from engine.imaging.decode import DEFAULT_LIMITS
from engine.imaging.limits import ImageLimits
from engine.wire.validation import parse_model


logger = logging.getLogger(__name__)

SCRIPT_KEY = "controlnet"  # A1111 matches `alwayson_scripts` keys to script titles case-insensitively
MERGE_MODE = "merge"  # sd-webui-controlnet's `InputMode.MERGE`: a unit's several images split into units
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
    union_control_type: Any = None  # a union ControlNet's control type
    animatediff_batch: Any = None
    batch_modifiers: Any = None
    batch_image_files: Any = None
    batch_keyframe_idx: Any = None


@dataclass(frozen=True)
class ControlUnit:
    """An enabled unit, validated and resolved: canonical names, slider defaults applied, images decoded."""

    index: int  # position in `args`, for error messages
    module: ModuleSpec
    model: str  # as sent; resolved against the models folder later
    weight: float
    image: Image.Image | None  # RGB; None: img2img's init image (filled in by `with_init_image`)
    resize_mode: str
    processor_res: float  # bound-checked as sd-webui-controlnet does (a hidden slider leaves 0.5)
    threshold_a: float
    threshold_b: float
    guidance_start: float
    guidance_end: float
    pixel_perfect: bool
    control_mode: str
    hr_option: str
    save_detected_map: bool
    mask: Image.Image | None = None  # "L", white = repaint: the inpaint modules' mask
    module_name: str = ""  # the module as the client spelled it (the infotext repeats it)
    union_type: str | None = None  # a union ControlNet's control type (None: from the module's tags)
    crop_to_mask: bool = True  # `inpaint_crop_input_image`: cut to the img2img "only masked" region
    # An IP-Adapter unit's further input images (RGB): sd-webui-controlnet averages the projected tokens.
    extra_images: tuple[Image.Image, ...] = ()

    where: str = ""  # the request field the unit came from when not a controlnet arg (ADetailer's)

    def field(self, key: str) -> str:
        if self.where:
            return f"{self.where}_{key}"
        return f"alwayson_scripts.{SCRIPT_KEY}.args[{self.index}].{key}"

    @property
    def is_face_embedding(self) -> bool:
        return self.module.output == FACE_EMBEDDING

    @property
    def is_image_prompt(self) -> bool:
        """An IP-Adapter unit (CLIP or FaceID): it conditions the UNet, not a ControlNet."""
        return self.module.output == IMAGE_PROMPT

    @property
    def is_instant_id_controlnet(self) -> bool:
        """sd-webui-controlnet types a ControlNet as InstantID by "instant_id" in its file name; the keypoint
        module says the same."""
        return not self.is_face_embedding and not self.is_image_prompt and (
            self.module.name == "instant_id_face_keypoints" or "instant_id" in self.model.lower())

    def runs_in(self, hires: bool) -> bool:
        """sd-webui-controlnet `hr_option`: which passes of hires fix the unit takes part in."""
        return self.hr_option == HR_BOTH or self.hr_option == (HR_HIGH_RES_ONLY if hires else HR_LOW_RES_ONLY)

    def infotext(self) -> str:
        """sd-webui-controlnet `ControlNetUnit.serialize`: the unit's infotext fields as "Key: value, …"."""
        values = {"Module": self.module_name or self.module.name, "Model": self.model, "Weight": self.weight,
                  "Resize Mode": self.resize_mode, "Processor Res": self.processor_res,
                  "Threshold A": self.threshold_a, "Threshold B": self.threshold_b,
                  "Guidance Start": self.guidance_start, "Guidance End": self.guidance_end,
                  "Pixel Perfect": self.pixel_perfect, "Control Mode": self.control_mode}
        return ", ".join(f"{key}: {value}" for key, value in values.items())


def infotext_params(units: Sequence[ControlUnit]) -> dict[str, str]:
    """`ControlNet N` entries for `extra_generation_params`, N counting the enabled units
    (sd-webui-controlnet `Infotext.write_infotext`)."""
    return {f"ControlNet {number}": unit.infotext() for number, unit in enumerate(units)}


def parse_controlnet_args(alwayson_scripts: Mapping[str, Any] | None, img2img: bool = False,
                          limits: ImageLimits = DEFAULT_LIMITS, max_units: int = 10) -> tuple[ControlUnit, ...]:
    """The enabled units of `alwayson_scripts.controlnet.args` (absent → none), in order. On img2img a unit
    may leave out its image (`with_init_image` fills it in). At most `max_units` entries, checked before any
    is parsed; each unit's images within `limits`.

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
    if len(args) > max_units:
        raise RequestError(f"{where}.args", f"holds {len(args)} units; at most {max_units} accepted")
    units = []
    for index, entry in enumerate(args):
        field = f"{where}.args[{index}]"
        if not isinstance(entry, Mapping):
            raise RequestError(field, f"must be a unit object, got {entry!r:.60}")
        raw = parse_model(UnitArgs, _with_current_keys(entry, field), field)
        if _is_active(raw):
            units += resolve_unit(raw, index, field, img2img, limits)
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


def resolve_unit(raw: UnitArgs, index: int, field: str, img2img: bool,
             limits: ImageLimits = DEFAULT_LIMITS) -> tuple[ControlUnit, ...]:
    """The unit ready to run; a ControlNet unit with several images in input_mode "merge" gives one per image."""
    module = find_module(raw.module, f"{field}.module")
    for key in ("advanced_weighting", "effective_region_mask", "ipadapter_input"):
        if getattr(raw, key) not in (None, "", []):
            raise UnsupportedError(f"{field}.{key}", "is not supported; leave it unset")
    if _no_model(raw.model):
        raise RequestError(f"{field}.model", f"module {module.name!r} needs a model (got {raw.model!r})")
    if module.name == AUTO_MODULE:
        module = MODULES[auto_module(str(raw.model))]
    if raw.guidance_start > raw.guidance_end:
        raise RequestError(f"{field}.guidance_start",
                           f"must not exceed guidance_end ({raw.guidance_start} > {raw.guidance_end})")
    inputs = decode_unit_images(raw.image, raw.mask, f"{field}.image", limits)
    if not inputs and not img2img:
        raise RequestError(f"{field}.image", "is required: txt2img has no init image to fall back on")
    merged = str(raw.input_mode).strip().lower() == MERGE_MODE
    if len(inputs) > 1 and module.output != IMAGE_PROMPT and not merged:
        # sd-webui-controlnet takes a list only for IP-Adapters (`accepts_multiple_inputs`); other units
        # fail its assertion unless `input_mode` "merge" splits them into one unit per image.
        raise UnsupportedError(f"{field}.image", "several images are taken by IP-Adapter units only, or with "
                                                 "input_mode \"merge\"; send one image per ControlNet unit")
    if module.output == IMAGE_PROMPT:
        for number, (_, clip_mask) in enumerate(inputs):
            if clip_mask is not None:
                _check_clip_mask(clip_mask, f"{field}.mask" if len(inputs) == 1 else f"{field}.image[{number}].mask")
    elif len(inputs) > 1:
        # sd-webui-controlnet `unfold_merged`: one unit per image, each at weight / images.
        unit = _resolved(raw, index, field, module, (None, None))
        return tuple(replace(unit, weight=raw.weight / len(inputs),
                             **_image_and_mask(picture, mask, module, f"{field}.image[{number}].mask"))
                     for number, (picture, mask) in enumerate(inputs))
    first = inputs[0] if inputs else (None, None)
    return (_resolved(raw, index, field, module, first, tuple(picture for picture, _ in inputs[1:])),)


def _image_and_mask(image: Image.Image | None, mask: Image.Image | None, module: ModuleSpec, where: str) -> dict:
    """A unit's image and the mask it keeps (inpaint modules only), the mask checked as sd-webui-controlnet
    reads it."""
    if mask is not None and module.output != IMAGE_PROMPT and not module.is_inpaint:
        _check_scribble_mask(mask, module, where)
    if image is not None and module.is_inpaint and mask is None:
        mask = Image.new("L", image.size, 0)  # `combine_image_and_mask`: no mask = nothing masked
    return {"image": image, "mask": mask if module.is_inpaint else None}


def _resolved(raw: UnitArgs, index: int, field: str, module: ModuleSpec, first: tuple,
              extra_images: tuple[Image.Image, ...] = ()) -> ControlUnit:
    return ControlUnit(
        index=index,
        module=module,
        model=str(raw.model).strip(),
        weight=raw.weight,
        **_image_and_mask(*first, module, f"{field}.mask"),
        resize_mode=named_choice(RESIZE_MODES, raw.resize_mode, f"{field}.resize_mode"),
        processor_res=_whole(module.resolution.pick(raw.processor_res)),
        threshold_a=module.threshold_a.pick(raw.threshold_a),
        threshold_b=module.threshold_b.pick(raw.threshold_b),
        guidance_start=raw.guidance_start,
        guidance_end=raw.guidance_end,
        pixel_perfect=raw.pixel_perfect,
        control_mode=named_choice(CONTROL_MODES, raw.control_mode, f"{field}.control_mode"),
        hr_option=named_choice(HR_OPTIONS, raw.hr_option, f"{field}.hr_option"),
        save_detected_map=raw.save_detected_map,
        module_name=str(raw.module).strip(),
        union_type=_union_type(raw.union_control_type, module, f"{field}.union_control_type"),
        crop_to_mask=raw.inpaint_crop_input_image is not False,
        extra_images=extra_images,
    )


def _whole(value: float) -> float:
    """`processor_res` is an integer field in sd-webui-controlnet; a hidden slider's default stays 0.5."""
    return int(value) if float(value).is_integer() else value


def _union_type(value: Any, module: ModuleSpec, field: str) -> str | None:
    """`union_control_type` ("Depth", "Hard Edge"… as sd-webui-controlnet's enum values); unset or "Unknown":
    the type of the module's tag, as sd-webui-controlnet's UI picks it from the control-type tab."""
    if value in (None, "", "Unknown"):
        return module.union_type
    wanted = str(value).strip().lower()
    found = next((name for name in UNION_TYPES if name.lower() == wanted), None)
    if found is None:
        raise RequestError(field, f"unknown control type {value!r}; valid: {choices(UNION_TYPES)}")
    return found


def _check_scribble_mask(mask: Image.Image, module: ModuleSpec, field: str) -> None:
    """A mask on a unit that does not inpaint: sd-webui-controlnet ignores an all-black or all-white one and
    otherwise draws the mask itself as the input ("canvas scribble mode"); that last use is not supported."""
    low, high = mask.getextrema()
    if high <= 5 or low >= 250:
        return
    raise UnsupportedError(field, f"a mask is used only by inpaint modules; module {module.name!r} would take "
                                  "the mask as a scribble (not supported): send it as the image")


def _check_clip_mask(mask: Image.Image, field: str) -> None:
    """sd-webui-controlnet multiplies an IP-Adapter's CLIP input by the inverted mask (its "CLIP mask"); only
    an all-black mask, which changes nothing, is accepted here."""
    if mask.getextrema()[1] <= 5:
        return
    raise UnsupportedError(field, "a mask on an IP-Adapter unit (CLIP mask) is not supported; send the image "
                                  "cut to what the adapter should see")


def named_choice(table: Mapping[Any, str], value: str | int, field: str) -> str:
    key = value.strip().lower() if isinstance(value, str) else value
    if key not in table:
        names = sorted({name for name in table.values()})
        raise RequestError(field, f"unknown value {value!r}; valid: {choices(names)} or their numbers")
    return table[key]


def _check_instant_id(units: list[ControlUnit]) -> None:
    """sd-webui-controlnet feeds an InstantID ControlNet the face tokens of the IP-Adapter unit: one such unit
    must be there (in any order here; sd-webui-controlnet wants it right before)."""
    embeddings = [unit for unit in units if unit.is_face_embedding]
    if len(embeddings) > 1:
        raise UnsupportedError(embeddings[1].field("module"), "only one face-embedding (InstantID) unit per request; "
                               "other IP-Adapter units may be added")
    needing = next((unit for unit in units if unit.is_instant_id_controlnet), None)
    if needing is not None and not embeddings:
        raise RequestError(needing.field("model"), "an InstantID ControlNet needs an 'instant_id_face_embedding' "
                                                   "(\"InsightFace (InstantID)\") unit with the InstantID IP-Adapter")
