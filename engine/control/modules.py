"""The ControlNet preprocessors ("modules") this worker runs: names, aliases, sliders. No torch."""

from dataclasses import dataclass
from typing import Any

from engine.errors import NotFoundError, choices


MAP = "map"  # the module draws an image the ControlNet is conditioned on
FACE_EMBEDDING = "face_embedding"  # the module yields an identity vector for an IP-Adapter


@dataclass(frozen=True)
class Slider:
    """A preprocessor parameter as sd-webui-controlnet's `PreprocessorParameter` describes it."""

    label: str
    value: float  # the default, used for -1 and for anything outside [minimum, maximum]
    minimum: float
    maximum: float
    step: float

    def pick(self, given: float) -> float:
        """sd-webui-controlnet `bound_check_params`: an out-of-range value (-1 = unset) becomes the default."""
        return self.value if not self.minimum <= given <= self.maximum else given

    def api_json(self) -> dict[str, Any]:
        return {"name": self.label, "value": self.value, "min": self.minimum, "max": self.maximum,
                "step": self.step}


# sd-webui-controlnet's default resolution slider (`Preprocessor.slider_resolution`); the InstantID
# preprocessors never override it, so 1024 is a valid processor_res there and -1 means 512.
RESOLUTION = Slider("Resolution", 512, 128, 2048, 8)


@dataclass(frozen=True)
class ModuleSpec:
    """One preprocessor: its sd-webui-controlnet name, other accepted names, output and sliders."""

    name: str
    output: str  # MAP or FACE_EMBEDDING
    aliases: tuple[str, ...] = ()
    resolution: Slider | None = None  # None: processor_res is not used
    threshold_a: Slider | None = None
    threshold_b: Slider | None = None
    # sd-webui-controlnet `use_soft_projection_in_hr_fix`: the hires pass uses "My prompt is more important"
    # scales whatever the unit's control mode (canny's thin edges otherwise produce artefacts when upscaled).
    soft_in_hires: bool = False

    @property
    def sliders(self) -> tuple[Slider, ...]:
        return tuple(s for s in (self.resolution, self.threshold_a, self.threshold_b) if s is not None)

    def detail(self) -> dict[str, Any]:
        """The `module_detail` entry of `/controlnet/module_list`."""
        return {"model_free": False, "sliders": [slider.api_json() for slider in self.sliders]}


# In the order sd-webui-controlnet's `/controlnet/module_list` lists them.
MODULES: dict[str, ModuleSpec] = {
    spec.name: spec
    for spec in (
        # Forge spells it "None"; the map is the input image itself.
        ModuleSpec("none", MAP),
        ModuleSpec("canny", MAP, resolution=RESOLUTION,
                   threshold_a=Slider("Low Threshold", 100, 1, 255, 1),
                   threshold_b=Slider("High Threshold", 200, 1, 255, 1),
                   soft_in_hires=True),
        ModuleSpec("instant_id_face_keypoints", MAP, resolution=RESOLUTION),
        # "InsightFace (InstantID)" is Forge's name for the same preprocessor (`forge_ipadapter.py`).
        ModuleSpec("instant_id_face_embedding", FACE_EMBEDDING, aliases=("InsightFace (InstantID)",),
                   resolution=RESOLUTION),
    )
}


def find_module(name: Any, field: str) -> ModuleSpec:
    """The module called `name` (its name or an alias, any letter case).

    Raises:
        NotFoundError: an unknown module, listing the supported names.
    """
    wanted = str(name).strip().lower()
    for spec in MODULES.values():
        if wanted in (spec.name, *(alias.lower() for alias in spec.aliases)):
            return spec
    known = [name for spec in MODULES.values() for name in (spec.name, *spec.aliases)]
    raise NotFoundError(field, f"unknown ControlNet module {name!r}; supported: {choices(known)}")
