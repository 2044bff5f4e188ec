"""Turn pydantic validation failures into one-line `RequestError`s naming the field."""

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

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
