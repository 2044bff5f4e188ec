"""A request's `styles` merged into its prompts, where A1111 merges them (`setup_prompts`): before extra
networks are parsed, into every per-image prompt and negative prompt and into the hires prompts."""

from typing import Any

from engine.prompts.styles import StyleDatabase
from engine.wire.txt2img import GenerationRequest


def apply_request_styles(
    request: GenerationRequest, styles: StyleDatabase | None
) -> tuple[GenerationRequest, list[str]]:
    """The request with its styles merged into its prompt fields, and a warning per unknown style name.

    A1111 applies an empty style for a name it does not know (clients send placeholders such as "string" or
    "None"); so does this, which still trims the prompt as A1111's merge does, and says so in the warnings.
    The request's own `styles` list is kept: A1111 echoes it in `parameters` and `info.styles`.
    """
    names = list(request.styles or [])
    if not names:
        return request, []
    database = styles or StyleDatabase([])
    warnings = [f"styles: no style named {name!r}; skipped" for name in database.unknown(names)]
    update: dict[str, Any] = {
        "prompt": _styled(request.prompt, database, names, negative=False),
        "negative_prompt": _styled(request.negative_prompt, database, names, negative=True),
    }
    # A hires prompt left empty means "the main prompt" and gets its styles through it; a given one is styled.
    for field, negative in (("hr_prompt", False), ("hr_negative_prompt", True)):
        if getattr(request, field, None):
            update[field] = _styled(getattr(request, field), database, names, negative=negative)
    return request.model_copy(update=update), warnings


def _styled(value: str | list[str] | None, database: StyleDatabase, names: list[str], negative: bool):
    def one(text: str) -> str:
        prompt, negative_prompt = database.apply(text, text, names)
        return negative_prompt if negative else prompt

    if isinstance(value, list):
        return [one(text) for text in value]
    return one(value or "")
