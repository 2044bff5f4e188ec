"""Turn pydantic validation failures into one-line `RequestError`s naming the field, and the lenient field
types A1111's pydantic-v1 request models amount to."""

import math
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ValidationError

from engine.errors import RequestError


Model = TypeVar("Model", bound=BaseModel)


def parse_model(model: type[Model], payload: Any, what: str) -> Model:
    """Validate `payload` into `model`; the first problem becomes a RequestError on its field."""
    if not isinstance(payload, dict):
        raise RequestError(what, f"must be a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"] if str(part) not in _UNION_BRANCHES) or what
        given = first.get("input")
        raise RequestError(field, f"{_describe(first)}, got {given!r:.60}") from None


# pydantic names the branch of an `X | Y` field it tried last; clients only care about the field.
_UNION_BRANCHES = {"str", "int", "float", "bool", "list[str]", "dict[str,any]"}


def _describe(error: dict) -> str:
    """pydantic's messages, reduced to what a client needs ("must be an integer")."""
    kind = error["type"]
    expected = {
        "int_parsing": "must be an integer",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "bool_parsing": "must be true or false",
        "string_type": "must be a string",
        "dict_type": "must be an object",
        "list_type": "must be a list",
    }
    if kind in expected:
        return expected[kind]
    return error["msg"][0].lower() + error["msg"][1:]


# A1111 v1.10 builds its request models with pydantic 1, whose validators coerce more than pydantic 2's lax
# mode: an int field takes a float and truncates it (`int(20.5)` → 20), a str field takes a number and
# stringifies it (`str(0)` → "0"). Clients written against A1111 rely on both (`"steps": 20.0`,
# `"sampler_index": 0`). Everything pydantic 2 already accepts (`"512"`, `512.0`, `"true"`) stays as it is.


def _v1_int(value: Any) -> Any:
    """pydantic 1 `int_validator`: `int(value)` for a finite float; everything else as pydantic 2 sees it."""
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return value


def _v1_str(value: Any) -> Any:
    """pydantic 1 `str_validator`: numbers (bools included, they are ints) become their `str()`."""
    if isinstance(value, int | float | Decimal):
        return str(value)
    return value


def _v1_str_or_list(value: Any) -> Any:
    """A prompt: a string, or a list of strings (one per image), numbers stringified as pydantic 1 does."""
    if isinstance(value, list):
        return [_v1_str(item) for item in value]
    return _v1_str(value)


LenientInt = Annotated[int, BeforeValidator(_v1_int)]
LenientStr = Annotated[str, BeforeValidator(_v1_str)]
LenientPrompt = Annotated[str | list[str], BeforeValidator(_v1_str_or_list)]
LenientStrList = list[LenientStr]
