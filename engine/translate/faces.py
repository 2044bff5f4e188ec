"""A1111's face restoration fields and options → `FaceRestorationPlan`."""

from collections.abc import Callable
from typing import Any

from engine.errors import RequestError
from engine.plan import FaceRestorationPlan


# A1111 v1.10 `shared_options` defaults.
DEFAULT_MODEL = "CodeFormer"
DEFAULT_CODEFORMER_WEIGHT = 0.5


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"override_settings.{key}", f"must be true or false, got {value!r}")
    return value


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"override_settings.{key}", f"must be a face restorer name, got {value!r}")
    return value


def _fraction(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise RequestError(f"override_settings.{key}", f"must be a number from 0 to 1, got {value!r}")
    return float(value)


# The options a request (override_settings) or POST /options may set; validated like the other options. Whether
# a model name is installed is checked when the request is resolved, against the models folder.
FACE_RESTORATION_SETTINGS: dict[str, Callable[[str, Any], Any]] = {
    "face_restoration": _flag,
    "face_restoration_model": _name,
    "code_former_weight": _fraction,
}


def face_restoration_plan(requested: bool | None, options: dict[str, Any]) -> FaceRestorationPlan | None:
    """What A1111 restores with: `restore_faces` (None falls back to the `face_restoration` option, off by
    default), the `face_restoration_model` option ("CodeFormer") and `code_former_weight` (0.5)."""
    enabled = options.get("face_restoration", False) if requested is None else requested
    if not enabled:
        return None
    return FaceRestorationPlan(
        model=options.get("face_restoration_model", DEFAULT_MODEL),
        weight=options.get("code_former_weight", DEFAULT_CODEFORMER_WEIGHT),
    )
