"""A selectable script's positional `script_args`, read against its A1111 controls: a missing or null arg takes
the control's default; values are coerced as A1111's Gradio controls would hand them over."""

from typing import Any

from engine.errors import RequestError
from engine.wire.scripts import ScriptSpec


class ScriptArgs:
    """`script_args` of one request, read by position. Errors name `script_args[i]` and the control."""

    def __init__(self, spec: ScriptSpec, values: list[Any] | None):
        if values is not None and not isinstance(values, list):
            raise RequestError("script_args", f"must be a list, got {type(values).__name__}")
        self.spec = spec
        self.values = list(values or [])

    def raw(self, index: int) -> Any:
        if index < len(self.values) and self.values[index] is not None:
            return self.values[index]
        return self.spec.args[index].value

    def where(self, index: int) -> str:
        return f"script_args[{index}] ({self.spec.title}: {self.spec.args[index].label or 'text'})"

    def flag(self, index: int) -> bool:
        value = self.raw(index)
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1", "yes", "on")
        return bool(value)

    def integer(self, index: int) -> int:
        return int(self.number(index))

    def number(self, index: int) -> float:
        value = self.raw(index)
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise RequestError(self.where(index), f"must be a number, got {value!r:.40}") from None

    def text(self, index: int) -> str:
        value = self.raw(index)
        return "" if value is None else str(value)

    def choice(self, index: int, choices: tuple[str, ...] | None = None) -> str:
        """A radio/dropdown value: a choice's text, or (Gradio `type="index"`) its position."""
        choices = choices or self.spec.args[index].choices or ()
        value = self.raw(index)
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= int(value) < len(choices):
            return choices[int(value)]
        if isinstance(value, str) and value in choices:
            return value
        raise RequestError(self.where(index), f"must be one of {list(choices)}, got {value!r:.40}")

    def names(self, index: int) -> list[str]:
        """A checkbox group or multi-select: a list of strings (a comma-separated string is split)."""
        value = self.raw(index)
        if value is None:
            return []
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple):
            raise RequestError(self.where(index), f"must be a list, got {value!r:.40}")
        return [str(item) for item in value]
