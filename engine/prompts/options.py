"""How prompts are encoded for one request (A1111 options that shape conditioning). No torch."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import RequestError, choices


# A1111 `sd_emphasis.options`: how `(x:1.2)` weights reach the text embedding.
#   Original: multiply each token's vectors by its weight, then restore the chunk's mean (the default);
#   No norm:  multiply only;  Ignore: parse the syntax but use no weights;  None: no parsing at all.
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
# A1111 setting ranges: `CLIP_stop_at_last_layers` slider 1..12, `comma_padding_backtrack` slider 0..74.
CLIP_SKIP_RANGE = (1, 12)
COMMA_BACKTRACK_RANGE = (0, 74)


@dataclass(frozen=True)
class PromptOptions:
    """A1111 `opts` values the text side reads; request `override_settings` may change them."""

    clip_skip: int = 1  # CLIP_stop_at_last_layers (ignored on SDXL, as A1111 does)
    emphasis: str = "Original"
    comma_padding_backtrack: int = 20
    # A1111 `sdxl_clip_l_skip`: apply CLIP skip to SDXL's CLIP-L too (hidden_states[-N], no final norm).
    sdxl_clip_l_skip: bool = False
    # A1111 `sdxl_refiner_high_aesthetic_score` / `..._low_...`: the SDXL refiner's score for the prompt and
    # for the negative prompt (its added conditions hold one).
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5
    # A1111 `pad_cond_uncond`: pad the shorter of prompt and negative prompt with empty-prompt chunks, so both
    # run in one batched UNet call (changes pixels slightly: the padded side attends to the extra chunks).
    pad_cond_uncond: bool = False

    def __post_init__(self):
        if self.emphasis not in EMPHASIS_MODES:
            raise RequestError(
                "override_settings.emphasis",
                f"unknown emphasis mode {self.emphasis!r}; valid: {choices(EMPHASIS_MODES)}",
            )
        _check_int("override_settings.CLIP_stop_at_last_layers", self.clip_skip, *CLIP_SKIP_RANGE)
        _check_int(
            "override_settings.comma_padding_backtrack", self.comma_padding_backtrack, *COMMA_BACKTRACK_RANGE
        )
        for key, value in (
            ("sdxl_refiner_high_aesthetic_score", self.aesthetic_score),
            ("sdxl_refiner_low_aesthetic_score", self.negative_aesthetic_score),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RequestError(f"override_settings.{key}", f"must be a number, got {value!r}")


def _check_int(field_name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(field_name, f"must be an integer from {low} to {high}, got {value!r}")


def _whole(value: Any) -> Any:
    """JSON clients send 2 or 2.0 for an integer setting; a fractional value stays as is and is rejected."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _flag(value: Any) -> Any:
    return value


# A1111 option name (as sent in `override_settings`) → (PromptOptions field, conversion before validation).
OVERRIDE_SETTINGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "CLIP_stop_at_last_layers": ("clip_skip", _whole),
    "emphasis": ("emphasis", _flag),
    "comma_padding_backtrack": ("comma_padding_backtrack", _whole),
    "sdxl_clip_l_skip": ("sdxl_clip_l_skip", _flag),
    "sdxl_refiner_high_aesthetic_score": ("aesthetic_score", _flag),
    "sdxl_refiner_low_aesthetic_score": ("negative_aesthetic_score", _flag),
    "pad_cond_uncond": ("pad_cond_uncond", _flag),
}


def prompt_options_from(settings: Mapping[str, Any]) -> PromptOptions:
    """PromptOptions from A1111 option values (the worker's defaults merged with `override_settings`).

    Keys this module does not know are ignored (other parts of the plan read them).

    Raises:
        RequestError: a value outside what A1111 accepts, naming `override_settings.<key>`.
    """
    values = {
        field: convert(settings[key])
        for key, (field, convert) in OVERRIDE_SETTINGS.items()
        if key in settings
    }
    if "sdxl_clip_l_skip" in values and not isinstance(values["sdxl_clip_l_skip"], bool):
        raise RequestError(
            "override_settings.sdxl_clip_l_skip", f"must be true or false, got {values['sdxl_clip_l_skip']!r}"
        )
    return PromptOptions(**values)


@dataclass(frozen=True)
class PassShape:
    """The pass being conditioned: its size (SDXL size conditioning) and how A1111 counts its steps.

    `steps` is the number of sampler steps; A1111 schedules prompt edits over `steps × 2` for second-order
    samplers because it counts model calls. `hires` marks the second pass of hires fix, whose prompt
    schedule continues the first pass's: `firstpass_steps` is that pass's counted steps (`schedule_steps`).
    """

    height: int
    width: int
    steps: int
    second_order: bool = False
    hires: bool = False
    firstpass_steps: int | None = None

    def __post_init__(self):
        if self.hires and not self.firstpass_steps:
            raise ValueError("a hires PassShape needs firstpass_steps (use first_pass.hires_pass(...))")

    @property
    def schedule_steps(self) -> int:
        """A1111 `SamplerData.total_steps`: steps × 2 for second-order samplers (prompt edits count calls)."""
        return self.steps * 2 if self.second_order else self.steps

    def hires_pass(self, height: int, width: int, steps: int, second_order: bool) -> "PassShape":
        """The hires pass after this first pass (A1111 `calculate_hr_conds`: its own sampler's count,
        scheduled after this pass's counted steps).

        Args:
            height, width: the hires size in pixels.
            steps: hires sampler steps (A1111: `hr_second_pass_steps or steps`).
            second_order: whether the hires sampler is second order.
        """
        return PassShape(height, width, steps, second_order, hires=True, firstpass_steps=self.schedule_steps)
