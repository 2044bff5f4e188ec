"""The refiner as A1111 plans it: top-level fields, the built-in `Refiner` script's args, options. No torch."""

from collections.abc import Mapping, Sequence
from typing import Any

from engine.errors import RequestError
from engine.plan import RefinerPlan


# How A1111 spells "no refiner" (`process_images_inner`).
NO_CHECKPOINT = (None, "", "None", "none")
# The built-in always-on script (`modules/processing_scripts/refiner.py`), named case-insensitively.
SCRIPT_TITLE = "refiner"
# Its UI values when a request sends fewer args: the accordion closed, no checkpoint, switch at 0.8.
SCRIPT_DEFAULTS = (False, "", 0.8)
SCRIPT_NOTE = (
    "alwayson_scripts.{name}: applied as refiner_checkpoint / refiner_switch_at (A1111's API skips the "
    "built-in Refiner script, whose setup runs for the web UI only)"
)


def parse_refiner_script_args(args: Any, field: str) -> tuple[str | None, float | None]:
    """The built-in `Refiner` script's positional args `[enable, checkpoint, switch_at]` (A1111
    `ScriptRefiner.setup`), missing ones taking the UI's defaults.

    Args:
        args: the `args` list sent under `alwayson_scripts.Refiner`.
        field: the field to name in errors, e.g. "alwayson_scripts.Refiner.args".

    Returns:
        (checkpoint, switch_at), or (None, None) when the script is disabled or names no checkpoint.

    Raises:
        RequestError: args that are not a list of at most three values of the right types.
    """
    if not isinstance(args, Sequence) or isinstance(args, str) or len(args) > len(SCRIPT_DEFAULTS):
        raise RequestError(field, f"must be a list [enable, checkpoint, switch_at], got {args!r}")
    enable, checkpoint, switch_at = (*args, *SCRIPT_DEFAULTS[len(args) :])
    if not isinstance(enable, bool):
        raise RequestError(f"{field}[0]", f"enable must be true or false, got {enable!r}")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise RequestError(f"{field}[1]", f"must be a checkpoint name, got {checkpoint!r}")
    if isinstance(switch_at, bool) or not isinstance(switch_at, int | float):
        raise RequestError(f"{field}[2]", f"switch_at must be a number, got {switch_at!r}")
    if not enable or checkpoint in NO_CHECKPOINT:
        return None, None
    return checkpoint, float(switch_at)


def refiner_plan(request, options: Mapping[str, Any]) -> tuple[RefinerPlan | None, tuple[str, ...]]:
    """The request's refiner, or None, and notes for the response.

    `refiner_checkpoint` / `refiner_switch_at` are what A1111's API reads. The built-in script's args are
    honoured too when no top-level checkpoint is given (A1111's API ignores them; clients send them anyway).
    `options` are the effective A1111 options (`hires_fix_refiner_pass`, `refiner_switch_by_sample_steps`).
    """
    checkpoint, switch_at = request.refiner_checkpoint, request.refiner_switch_at
    notes: list[str] = []
    script = _script_args(request.alwayson_scripts or {})
    if script is not None:
        name, args = script
        notes.append(SCRIPT_NOTE.format(name=name))
        if checkpoint in NO_CHECKPOINT:
            checkpoint, switch_at = parse_refiner_script_args(args, f"alwayson_scripts.{name}.args")
    if checkpoint in NO_CHECKPOINT:
        return None, tuple(notes)
    if switch_at is None:
        notes.append("refiner_switch_at not given: the refiner runs from the first step, as in A1111")
    plan = RefinerPlan(
        checkpoint=checkpoint,
        switch_at=switch_at,
        hires_passes=options.get("hires_fix_refiner_pass", "second pass"),
        by_sampling_steps=bool(options.get("refiner_switch_by_sample_steps", False)),
    )
    return plan, tuple(notes)


def _script_args(scripts: Mapping[str, Any]) -> tuple[str, Any] | None:
    """(name as sent, its args) of the built-in Refiner script in `alwayson_scripts`, if present."""
    for name, value in scripts.items():
        if name.lower() == SCRIPT_TITLE:
            # A1111 reads {"args": [...]}; a bare list is taken as the args.
            args = value.get("args", []) if isinstance(value, Mapping) else value
            return name, args
    return None
