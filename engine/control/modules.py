"""The ControlNet preprocessors ("modules") this worker runs: names, labels, sliders, tags. No torch.

One table, `MODULES`, in sd-webui-controlnet v1.1.455's terms (`scripts/supported_preprocessor.py`,
`scripts/preprocessor/*.py`, `scripts/preprocessor/legacy/preprocessor_compiled.py`): each row is a
`ModuleSpec`. A module is found by its name (`module_list`), its UI label (`module_list?alias_names=true`) or an
extra alias (Forge's spellings). How a map module draws its map is `engine.control.maps.registry`; which
weights it loads is `engine.control.maps.annotators`. To add a module, add a row here (and a runner there).
"""

from dataclasses import dataclass
from typing import Any

from engine.errors import NotFoundError, UnsupportedError, choices


MAP = "map"  # the module draws an image the ControlNet is conditioned on
FACE_EMBEDDING = "face_embedding"  # the module yields InstantID's identity vector for its IP-Adapter
IMAGE_PROMPT = "image_prompt"  # the module feeds an IP-Adapter (CLIP image features, FaceID's embedding)

# Mask handling (`Preprocessor.accepts_mask` / `requires_mask`): "inpaint" modules read an RGBA input whose
# alpha is the mask (white = repaint).
NO_MASK, MASK_REQUIRED = "none", "required"

# sd-webui-controlnet `ControlNetUnionControlType`, in its order: a union ControlNet (xinsir ProMax) reads the
# control type's index; the type follows from the module's tag (`ControlNetUnionControlType.from_str`).
UNION_TYPES = ("OpenPose", "Depth", "Soft Edge", "Hard Edge", "Normal Map", "Segmentation", "Tile", "Inpaint")
_UNION_TYPE_OF_TAG = {
    "openpose": "OpenPose", "depth": "Depth", "scribble": "Soft Edge", "softedge": "Soft Edge",
    "canny": "Hard Edge", "lineart": "Hard Edge", "mlsd": "Hard Edge", "normalmap": "Normal Map",
    "segmentation": "Segmentation", "tile": "Tile", "blur": "Tile", "inpaint": "Inpaint",
}


@dataclass(frozen=True)
class Slider:
    """A preprocessor parameter as sd-webui-controlnet's `PreprocessorParameter` describes it."""

    label: str
    value: float  # the default, used for -1 and for anything outside [minimum, maximum]
    minimum: float
    maximum: float
    step: float = 0.01  # `PreprocessorParameter`'s default step
    visible: bool = True  # hidden sliders still bound-check the value but are not listed

    def pick(self, given: float) -> float:
        """sd-webui-controlnet `bound_check_params`: an out-of-range value (-1 = unset) becomes the default."""
        return self.value if not self.minimum <= given <= self.maximum else given

    def api_json(self) -> dict[str, Any]:
        return {"name": self.label, "value": self.value, "min": self.minimum, "max": self.maximum,
                "step": self.step}


# `Preprocessor.slider_resolution`. Every legacy preprocessor keeps it (their `resolution` entry is stored
# under another attribute), so all of them list it and read `processor_res`, bounded to 64..2048, default 512.
RESOLUTION = Slider("Resolution", 512, 64, 2048, 8)
# `PreprocessorParameter(visible=False)`: modules that ignore processor_res (invert, inpaint…).
NO_RESOLUTION = Slider("EMPTY_LABEL", 0.5, 0.0, 1.0, visible=False)
SHUFFLE_RESOLUTION = Slider("EMPTY_LABEL", 512, 0.0, 1.0, visible=False)  # "Fix res to 512"
# `PreprocessorParameter(visible=False)` for an unused threshold slider: -1 becomes 0.5.
UNUSED = Slider("EMPTY_LABEL", 0.5, 0.0, 1.0, visible=False)


@dataclass(frozen=True)
class ModuleSpec:
    """One preprocessor: sd-webui-controlnet's name and label, what it yields and its sliders."""

    name: str
    output: str = MAP  # MAP or FACE_EMBEDDING (other helpers add theirs)
    label: str | None = None  # the UI label (`alias_names=true`); None: the name
    aliases: tuple[str, ...] = ()  # other accepted spellings (Forge)
    resolution: Slider = RESOLUTION
    threshold_a: Slider = UNUSED
    threshold_b: Slider = UNUSED
    tags: tuple[str, ...] = ()
    priority: int = 0  # `sorting_priority`: higher is listed first
    mask: str = NO_MASK
    annotator: str | None = None  # the weights it loads (`engine.control.maps.annotators`); None: none
    # `use_soft_projection_in_hr_fix` (hook.py: "canny" and "mlsd" in the name): the hires pass uses "My prompt
    # is more important" scales whatever the unit's control mode (thin lines otherwise give artefacts).
    soft_in_hires: bool = False
    post: str | None = None  # a step after the UNet or the decode (inpaint_only, tile_colorfix, recolor)
    # IP-Adapter modules: the CLIP vision encoder (annotator "clip_h" / "clip_g") and the insightface pack
    # (FaceID) they run; `ip-adapter-auto` has neither and takes them from the model's name.
    image_encoder: str | None = None
    face_pack: str | None = None

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, self.title, *self.aliases)

    @property
    def is_inpaint(self) -> bool:
        """sd-webui-controlnet `ControlNetUnit.is_inpaint`: "inpaint" in the module's name."""
        return "inpaint" in self.name

    @property
    def union_type(self) -> str | None:
        """The union ControlNet control type its first matching tag selects (None: none applies)."""
        return next((_UNION_TYPE_OF_TAG[t.lower()] for t in self.tags if t.lower() in _UNION_TYPE_OF_TAG), None)

    @property
    def sliders(self) -> tuple[Slider, ...]:
        return tuple(s for s in (self.resolution, self.threshold_a, self.threshold_b) if s.visible)

    def detail(self) -> dict[str, Any]:
        """The `module_detail` entry of `/controlnet/module_list`."""
        return {"model_free": False, "sliders": [slider.api_json() for slider in self.sliders]}


def _depth(name, **kw):
    return ModuleSpec(name, tags=("Depth",), **kw)


def _pose(name, **kw):
    return ModuleSpec(name, tags=("OpenPose",), annotator=kw.pop("annotator", "openpose"), **kw)


LERES_NEAR = Slider("Remove Near %", 0, 0, 100, 0.1)
LERES_BACKGROUND = Slider("Remove Background %", 0, 0, 100, 0.1)
GAMMA = Slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001)
VARIATION = Slider("Variation", 8.0, 3.0, 32.0, 1.0)

_ROWS = (
    # Forge spells it "None"; the map is the input image itself.
    ModuleSpec("none", tags=("InstructP2P",), priority=10, aliases=("None",)),
    ModuleSpec("canny", tags=("Canny",), priority=100, soft_in_hires=True,
               threshold_a=Slider("Low Threshold", 100, 1, 255, 1),
               threshold_b=Slider("High Threshold", 200, 1, 255, 1)),
    ModuleSpec("invert", label="invert (from white bg & black line)", resolution=NO_RESOLUTION, priority=20,
               tags=("Canny", "Lineart", "Scribble", "MLSD")),
    ModuleSpec("blur_gaussian", tags=("Tile",), threshold_a=Slider("Sigma", 9.0, 0.01, 64.0)),
    ModuleSpec("scribble_xdog", tags=("Scribble", "SparseCtrl"), threshold_a=Slider("XDoG Threshold", 32, 1, 64)),
    ModuleSpec("shuffle", tags=("Shuffle",), resolution=SHUFFLE_RESOLUTION),
    ModuleSpec("tile_resample", tags=("Tile",), priority=100,
               threshold_a=Slider("Down Sampling Rate", 1.0, 1.0, 8.0)),
    ModuleSpec("tile_colorfix", tags=("Tile",), threshold_a=VARIATION, post="colorfix"),
    ModuleSpec("tile_colorfix+sharp", tags=("Tile",), threshold_a=VARIATION,
               threshold_b=Slider("Sharpness", 1.0, 0.0, 2.0), post="colorfix"),
    ModuleSpec("recolor_luminance", tags=("Recolor",), priority=100, threshold_a=GAMMA, post="recolor"),
    ModuleSpec("recolor_intensity", tags=("Recolor",), threshold_a=GAMMA, post="recolor"),
    ModuleSpec("threshold", threshold_a=Slider("Binarization Threshold", 127, 0, 255)),
    ModuleSpec("color", label="t2ia_color_grid", tags=("T2I-Adapter",)),
    ModuleSpec("lineart_standard", label="lineart_standard (from white bg & black line)", tags=("Lineart",),
               priority=100),
    ModuleSpec("inpaint", label="inpaint_global_harmonious", resolution=NO_RESOLUTION, tags=("Inpaint",),
               mask=MASK_REQUIRED),
    ModuleSpec("inpaint_only", resolution=NO_RESOLUTION, tags=("Inpaint",), priority=100, mask=MASK_REQUIRED,
               post="inpaint_only"),
    ModuleSpec("inpaint_only+lama", resolution=NO_RESOLUTION, tags=("Inpaint",), mask=MASK_REQUIRED,
               annotator="lama", post="inpaint_only"),
    # Weights from the annotator folder (controlnet_aux's detectors, spandrel's LaMa).
    _depth("depth", label="depth_midas", priority=100, annotator="midas"),
    ModuleSpec("normal_map", label="normal_midas", tags=("NormalMap",), annotator="midas",
               threshold_a=Slider("Normal Background Threshold", 0.4, 0.0, 1.0)),
    _depth("depth_zoe", annotator="zoedepth"),
    _depth("depth_leres", annotator="leres", threshold_a=LERES_NEAR, threshold_b=LERES_BACKGROUND),
    _depth("depth_leres++", annotator="leres", threshold_a=LERES_NEAR, threshold_b=LERES_BACKGROUND),
    _depth("depth_anything", annotator="depth_anything"),
    _depth("depth_anything_v2", annotator="depth_anything_v2"),
    _pose("openpose"),
    _pose("openpose_face"),
    _pose("openpose_faceonly"),
    _pose("openpose_full", priority=100),
    _pose("openpose_hand"),
    _pose("dw_openpose_full", annotator="dwpose"),
    _pose("animal_openpose", annotator="animal_pose"),
    ModuleSpec("lineart", label="lineart_realistic", tags=("Lineart",), annotator="lineart"),
    ModuleSpec("lineart_coarse", tags=("Lineart",), annotator="lineart"),
    ModuleSpec("lineart_anime", tags=("Lineart",), annotator="lineart_anime"),
    ModuleSpec("hed", label="softedge_hed", tags=("SoftEdge",), annotator="hed"),
    ModuleSpec("hed_safe", label="softedge_hedsafe", tags=("SoftEdge",), annotator="hed"),
    ModuleSpec("pidinet", label="softedge_pidinet", tags=("SoftEdge",), priority=100, annotator="pidinet"),
    ModuleSpec("pidinet_safe", label="softedge_pidisafe", tags=("SoftEdge",), annotator="pidinet"),
    ModuleSpec("scribble_hed", tags=("Scribble", "SparseCtrl"), annotator="hed"),
    ModuleSpec("pidinet_scribble", label="scribble_pidinet", tags=("Scribble", "SparseCtrl"), priority=100,
               annotator="pidinet"),
    ModuleSpec("pidinet_sketch", label="t2ia_sketch_pidi", tags=("T2I-Adapter",), annotator="pidinet"),
    ModuleSpec("mlsd", tags=("MLSD",), priority=100, annotator="mlsd", soft_in_hires=True,
               threshold_a=Slider("MLSD Value Threshold", 0.1, 0.01, 2.0),
               threshold_b=Slider("MLSD Distance Threshold", 0.1, 0.01, 20.0)),
    ModuleSpec("normal_bae", tags=("NormalMap",), priority=100, annotator="normal_bae"),
    ModuleSpec("anime_face_segment", label="seg_anime_face", tags=("Segmentation",),
               annotator="anime_face_segment"),
    ModuleSpec("mobile_sam", tags=("Segmentation",), annotator="mobile_sam"),
    # OneFormer (Swin-L) as SHI-Labs' transformers conversions of the extension's checkpoints.
    ModuleSpec("oneformer_ade20k", label="seg_ofade20k", tags=("Segmentation",), priority=100,
               annotator="oneformer_ade20k"),
    ModuleSpec("oneformer_coco", label="seg_ofcoco", tags=("Segmentation",), annotator="oneformer_coco"),
    ModuleSpec("instant_id_face_keypoints", tags=("Instant-ID",)),
    # IP-Adapter (`preprocessor_compiled.py`, `ip_adapter_auto.py`): no map, the unit conditions the UNet's
    # cross-attention through the adapter (`engine.control.image_prompts`).
    ModuleSpec("ip-adapter-auto", IMAGE_PROMPT, tags=("IP-Adapter",), priority=1000),
    ModuleSpec("ip-adapter_clip_sd15", IMAGE_PROMPT, label="ip-adapter_clip_h", tags=("IP-Adapter",), priority=100,
               image_encoder="clip_h"),
    ModuleSpec("ip-adapter_clip_sdxl", IMAGE_PROMPT, label="ip-adapter_clip_g", tags=("IP-Adapter",),
               image_encoder="clip_g"),
    ModuleSpec("ip-adapter_clip_sdxl_plus_vith", IMAGE_PROMPT, tags=("IP-Adapter",), image_encoder="clip_h"),
    ModuleSpec("ip-adapter_face_id", IMAGE_PROMPT, tags=("IP-Adapter",), face_pack="buffalo_l"),
    ModuleSpec("ip-adapter_face_id_plus", IMAGE_PROMPT, tags=("IP-Adapter",), image_encoder="clip_h",
               face_pack="buffalo_l"),
    # "InsightFace (InstantID)" is Forge's name for the same preprocessor (`forge_ipadapter.py`).
    ModuleSpec("instant_id_face_embedding", FACE_EMBEDDING, aliases=("InsightFace (InstantID)",),
               tags=("Instant-ID",)),
)
MODULES: dict[str, ModuleSpec] = {spec.name: spec for spec in _ROWS}

# sd-webui-controlnet modules this worker does not run (no maintained library has their models in the
# extension's format): named in the error so a client knows it is not a typo.
NOT_SUPPORTED: dict[str, str] = {
    # UniFormer's mmseg checkpoint has no maintained loader (README).
    **dict.fromkeys(("segmentation", "seg_ufade20k"), "segmentation (UniFormer)"),
    **dict.fromkeys(("densepose", "densepose_parula"), "DensePose"),
    **dict.fromkeys(("lineart_anime_denoise", "depth_hand_refiner", "mediapipe_face", "teed", "softedge_teed",
                     "softedge_anyline", "normal_dsine", "t2ia_style_clipvision", "clip_vision"),
                    "this preprocessor"),
    **dict.fromkeys(("reference_only", "reference_adain", "reference_adain+attn"), "reference-only attention"),
    **dict.fromkeys(("revision_clipvision", "revision_ignore_prompt"), "ReVision"),
    "ip-adapter_pulid": "PuLID",
}


def find_module(name: Any, field: str) -> ModuleSpec:
    """The module called `name`: its name, label or an alias, any letter case (sd-webui-controlnet's
    `get_preprocessor` looks up labels, then names).

    Raises:
        UnsupportedError: a module of sd-webui-controlnet this worker does not run.
        NotFoundError: an unknown module, listing the supported names.
    """
    wanted = str(name).strip().lower()
    for spec in MODULES.values():
        if wanted in (n.lower() for n in spec.names):
            return spec
    if wanted in NOT_SUPPORTED:
        raise UnsupportedError(field, f"ControlNet module {name!r} ({NOT_SUPPORTED[wanted]}) is not supported; "
                                      f"supported: {choices(MODULES)}")
    known = [name for spec in MODULES.values() for name in dict.fromkeys(spec.names)]
    raise NotFoundError(field, f"unknown ControlNet module {name!r}; supported: {choices(known)}")


def sorted_modules() -> list[ModuleSpec]:
    """sd-webui-controlnet `get_sorted_preprocessors`: "none" first, then by priority and label, descending."""
    rest = [spec for spec in MODULES.values() if spec.name != "none"]
    ordered = sorted(rest, key=lambda spec: str(spec.priority).zfill(8) + spec.title, reverse=True)
    return [MODULES["none"], *ordered]
