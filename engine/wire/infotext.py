"""A1111's infotext read back into parameters (`parse_generation_parameters`), for `POST /sdapi/v1/png-info`.

Learned from A1111 `modules/infotext_utils.py` (AGPL-3.0), written here.
"""

import json
import re
from typing import Any


# One "Key: value" of an infotext's last line; a value is a JSON string in quotes, or runs to the next comma.
INFOTEXT_PARAMETER = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
# What A1111's `parse_generation_parameters` fills in for keys an infotext leaves out (the ones we read).
INFOTEXT_DEFAULTS: dict[str, Any] = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Emphasis": "Original",
}


def parse_infotext(text: str) -> dict[str, Any]:
    """A1111 `parse_generation_parameters`: prompt lines, then "Negative prompt:" lines, then one line of
    "Key: value" pairs (recognised when it holds at least three). Values stay strings, quoted ones unquoted;
    "WxH" values split into "Key-1" and "Key-2".
    """
    *lines, last = text.strip().split("\n")
    if len(INFOTEXT_PARAMETER.findall(last)) < 3:
        lines.append(last)
        last = ""
    texts = {"Prompt": "", "Negative prompt": ""}
    current = "Prompt"
    for line in (line.strip() for line in lines):
        if line.startswith("Negative prompt:"):
            current, line = "Negative prompt", line[len("Negative prompt:") :].strip()
        # A1111 joins lines with "\n", starting afresh while the text so far is empty.
        texts[current] = f"{texts[current]}\n{line}" if texts[current] else line
    parameters: dict[str, Any] = {}
    for key, value in INFOTEXT_PARAMETER.findall(last):
        value = _unquote(value.strip())
        size = IMAGE_SIZE.match(value)
        if size:
            parameters[f"{key}-1"], parameters[f"{key}-2"] = size[1], size[2]
        else:
            parameters[key] = value
    return {**INFOTEXT_DEFAULTS, **parameters, **texts}


def _unquote(value: str) -> str:
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
