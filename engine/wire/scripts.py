"""A1111's scripts as its API describes them: titles, where each exists (txt2img / img2img), always-on or
selectable, and the positional args of each (`GET /sdapi/v1/script-info`, built in A1111 from the Gradio
controls a script's `ui()` returns: label, value, minimum, maximum, step, choices).

Titles and controls follow AUTOMATIC1111/stable-diffusion-webui v1.10 `scripts/*.py`,
`modules/processing_scripts/*.py` and `extensions-builtin/*/scripts/*.py`. Pure data, no torch.
"""

from dataclasses import dataclass, field
from typing import Any

from engine.errors import RequestError


@dataclass(frozen=True)
class ScriptArg:
    """One positional arg (A1111 `ScriptArg`)."""

    label: str
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: tuple[str, ...] | None = None

    def info(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "value": self.value,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "step": self.step,
            "choices": list(self.choices) if self.choices is not None else None,
        }


@dataclass(frozen=True)
class ScriptSpec:
    """A script as A1111's API sees it."""

    title: str
    alwayson: bool
    txt2img: bool = True
    img2img: bool = True
    args: tuple[ScriptArg, ...] = field(default=())

    @property
    def name(self) -> str:
        """A1111's script name: the lower-cased title (what `/sdapi/v1/scripts` lists)."""
        return self.title.lower()

    def exists_in(self, img2img: bool) -> bool:
        return self.img2img if img2img else self.txt2img


def _slider(label: str, value: Any, minimum: Any, maximum: Any, step: Any) -> ScriptArg:
    return ScriptArg(label, value, minimum, maximum, step)


def _choice(label: str, value: Any, *choices: str) -> ScriptArg:
    return ScriptArg(label, value, choices=choices)


DIRECTIONS = ("left", "right", "up", "down")
INPAINTING_FILLS = ("fill", "original", "latent noise", "latent nothing")

# X/Y/Z plot: the same nine controls per axis, then the options (`xyz_grid.py` `ui`). Axis types are indices
# into the axis list of the tab (see engine.scripts.axes).
_XYZ_ARGS = (
    *(
        arg
        for axis, default in (("X", "Seed"), ("Y", "Nothing"), ("Z", "Nothing"))
        for arg in (
            ScriptArg(f"{axis} type", default),
            ScriptArg(f"{axis} values", ""),
            ScriptArg(f"{axis} values", None, choices=()),
        )
    ),
    ScriptArg("Draw legend", True),
    ScriptArg("Include Sub Images", False),
    ScriptArg("Include Sub Grids", False),
    ScriptArg("Keep -1 for seeds", False),
    ScriptArg("Vary seeds for X", False),
    ScriptArg("Vary seeds for Y", False),
    ScriptArg("Vary seeds for Z", False),
    _slider("Grid margins (px)", 0, 0, 500, 2),
    ScriptArg("Use text inputs instead of dropdowns", False),
)

SELECTABLE_SCRIPTS: tuple[ScriptSpec, ...] = (
    ScriptSpec("Prompt matrix", False, args=(
        ScriptArg("Put variable parts at start of prompt", False),
        ScriptArg("Use different seed for each picture", False),
        _choice("Select prompt", "positive", "positive", "negative"),
        _choice("Select joining char", "comma", "comma", "space"),
        _slider("Grid margins (px)", 0, 0, 500, 2),
    )),
    ScriptSpec("Prompts from file or textbox", False, args=(
        ScriptArg("Iterate seed every line", False),
        ScriptArg("Use same random seed for all lines", False),
        _choice("Insert prompts at the", "start", "start", "end"),
        ScriptArg("List of prompt inputs", ""),
    )),
    ScriptSpec("X/Y/Z plot", False, args=_XYZ_ARGS),
    ScriptSpec("SD upscale", False, txt2img=False, args=(
        ScriptArg("", "Will upscale the image by the selected scale factor; use width and height sliders "
                      "to set tile size"),
        _slider("Tile overlap", 64, 0, 256, 16),
        ScriptArg("Upscaler", "None"),  # A1111: the first upscaler of its list
        _slider("Scale Factor", 2.0, 1.0, 4.0, 0.05),
    )),
    ScriptSpec("Loopback", False, txt2img=False, args=(
        _slider("Loops", 4, 1, 32, 1),
        _slider("Final denoising strength", 0.5, 0, 1, 0.01),
        _choice("Denoising strength curve", "Linear", "Aggressive", "Linear", "Lazy"),
        _choice("Append interrogated prompt at each iteration", "None", "None", "CLIP", "DeepBooru"),
    )),
    ScriptSpec("Outpainting mk2", False, txt2img=False, args=(
        ScriptArg("", "Recommended settings: Sampling Steps: 80-100, Sampler: Euler a, Denoising strength: 0.8"),
        _slider("Pixels to expand", 128, 8, 256, 8),
        _slider("Mask blur", 8, 0, 64, 1),
        ScriptArg("Outpainting direction", list(DIRECTIONS), choices=DIRECTIONS),
        _slider("Fall-off exponent (lower=higher detail)", 1.0, 0.0, 4.0, 0.01),
        _slider("Color variation", 0.05, 0.0, 1.0, 0.01),
    )),
    ScriptSpec("Poor man's outpainting", False, txt2img=False, args=(
        _slider("Pixels to expand", 128, 8, 256, 8),
        _slider("Mask blur", 4, 0, 64, 1),
        ScriptArg("Masked content", "fill", choices=INPAINTING_FILLS),
        ScriptArg("Outpainting direction", list(DIRECTIONS), choices=DIRECTIONS),
    )),
)

BUILTIN_ALWAYSON_SCRIPTS: tuple[ScriptSpec, ...] = (
    ScriptSpec("Refiner", True, args=(
        ScriptArg("Refiner", False),
        ScriptArg("Checkpoint", ""),
        _slider("Switch at", 0.8, 0.01, 1.0, 0.01),
    )),
    ScriptSpec("Seed", True, args=(
        ScriptArg("Seed", -1),
        ScriptArg("Extra", False),
        ScriptArg("Variation seed", -1),
        _slider("Variation strength", 0.0, 0, 1, 0.01),
        _slider("Resize seed from width", 0, 0, 2048, 8),
        _slider("Resize seed from height", 0, 0, 2048, 8),
    )),
    ScriptSpec("Sampler", True, args=(
        _slider("Sampling steps", 20, 1, 150, 1),
        ScriptArg("Sampling method", "DPM++ 2M"),
        ScriptArg("Schedule type", "Automatic"),
    )),
    ScriptSpec("Comments", True),
    ScriptSpec("Extra options", True),
    ScriptSpec("Hypertile", True),
    ScriptSpec("Soft Inpainting", True, txt2img=False, args=(
        ScriptArg("Soft inpainting", False),
        _slider("Schedule bias", 1, 0, 8, 0.1),
        _slider("Preservation strength", 0.5, 0.05, 8, 0.05),
        _slider("Transition contrast boost", 4, 1, 32, 0.5),
        _slider("Mask influence", 0, 0, 1, 0.05),
        _slider("Difference threshold", 0.5, 0, 8, 0.25),
        _slider("Difference contrast", 2, 0, 8, 0.25),
    )),
    ScriptSpec("Tiled VAE", True, args=(
        ScriptArg("Enable Tiled VAE", False),
        _slider("Encoder Tile Size", 1024, 256, 4096, 16),
        _slider("Decoder Tile Size", 128, 48, 512, 16),
        ScriptArg("Move VAE to GPU (if possible)", True),
        ScriptArg("Fast Decoder", True),
        ScriptArg("Fast Encoder", True),
        ScriptArg("Fast Encoder Color Fix", False),
    )),
    ScriptSpec("Tiled Diffusion", True, args=(ScriptArg("Enable Tiled Diffusion", False),)),
)


def selectable_script(name: str | None, img2img: bool) -> ScriptSpec | None:
    """The selectable script a request's `script_name` names (case-insensitive title, as A1111 matches);
    None for no script. Raises A1111's 422 error for a name the tab does not have."""
    if name is None or name == "":
        return None
    for spec in SELECTABLE_SCRIPTS:
        if spec.name == name.lower() and spec.exists_in(img2img):
            return spec
    listed = [spec.title for spec in SELECTABLE_SCRIPTS if spec.exists_in(img2img)]
    # A1111 answers HTTP 422 "Script '<name>' not found".
    raise RequestError("script_name", f"Script '{name}' not found; this worker has {listed}")


def check_alwayson_names(names, extensions: dict[str, str], img2img: bool) -> None:
    """A1111's checks on `alwayson_scripts` keys: each must be a script of the tab, and an always-on one.

    Args:
        names: the request's `alwayson_scripts` keys.
        extensions: lower-cased name → title of the extension scripts the worker implements.
    """
    builtin = {spec.name for spec in BUILTIN_ALWAYSON_SCRIPTS if spec.exists_in(img2img)}
    selectable = {spec.name for spec in SELECTABLE_SCRIPTS if spec.exists_in(img2img)}
    for name in names:
        folded = name.lower()
        if folded in selectable:
            raise RequestError(
                f"alwayson_scripts.{name}", "Cannot have a selectable script in the always on scripts params"
            )
        if folded not in builtin and folded not in extensions:
            listed = sorted([*extensions.values(), *(s.title for s in BUILTIN_ALWAYSON_SCRIPTS
                                                     if s.exists_in(img2img))])
            raise RequestError(f"alwayson_scripts.{name}", f"Script '{name}' not found; this worker has {listed}")


def script_names(extensions: dict[str, str], img2img: bool) -> list[str]:
    """`GET /sdapi/v1/scripts` for one tab: every script's lower-cased title."""
    ours = [spec.name for spec in (*SELECTABLE_SCRIPTS, *BUILTIN_ALWAYSON_SCRIPTS) if spec.exists_in(img2img)]
    return sorted({*ours, *extensions})


def script_info(extensions: dict[str, str]) -> list[dict[str, Any]]:
    """`GET /sdapi/v1/script-info`: one entry per script and tab, txt2img's first, as A1111 lists them.
    Extension scripts are listed without args (their arguments are objects this worker documents)."""
    listed = []
    for img2img in (False, True):
        for spec in (*SELECTABLE_SCRIPTS, *BUILTIN_ALWAYSON_SCRIPTS):
            if spec.exists_in(img2img):
                listed.append({"name": spec.name, "is_alwayson": spec.alwayson, "is_img2img": img2img,
                               "args": [arg.info() for arg in spec.args]})
        ours = {spec.name for spec in (*SELECTABLE_SCRIPTS, *BUILTIN_ALWAYSON_SCRIPTS)}
        for name in sorted(set(extensions) - ours):
            listed.append({"name": name, "is_alwayson": True, "is_img2img": img2img, "args": []})
    return listed
