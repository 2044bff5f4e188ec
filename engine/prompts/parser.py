"""A1111 prompt syntax entry points: extra-network tags, `AND` sub-prompts, editing and attention."""

import re
from dataclasses import dataclass, field

from engine.prompts.attention import parse_prompt_attention
from engine.prompts.schedule import get_prompt_schedule


__all__ = [
    "ExtraNetworkTag",
    "extract_extra_networks",
    "get_prompt_schedule",
    "parse_prompt_attention",
    "split_composable",
]

# A1111 `extra_networks.re_extra_net`: `<kind:args>`, kind made of word characters, args up to the next `>`.
_EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")

# A1111 `prompt_parser.re_AND`: the uppercase word AND separates composable sub-prompts.
_AND = re.compile(r"\bAND\b")

# A1111 `prompt_parser.re_weight`: the shortest text such that what follows is an optional
# `:weight` and trailing whitespace. Trailing whitespace is dropped, leading whitespace kept.
_SUBPROMPT_WEIGHT = re.compile(r"((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*")


@dataclass(frozen=True)
class ExtraNetworkTag:
    """One `<kind:arg:arg:name=value>` tag, e.g. `<lora:face:0.8>` -> kind "lora", positional ("face", "0.8").

    Arguments stay strings as in A1111; the network (e.g. LoRA) decides how to read them.
    """

    kind: str
    positional: tuple[str, ...]
    named: dict[str, str] = field(default_factory=dict, hash=False)


def extract_extra_networks(prompt: str) -> tuple[str, list[ExtraNetworkTag]]:
    """Remove extra-network tags from a prompt and return them, as A1111's `extra_networks.parse_prompt`.

    Arguments are split on ":"; an argument with exactly one "=" is named (`te=0.5`), any other is
    positional (so "a=b=c" stays positional, as in A1111). The tags are removed without touching the
    text around them: `"a, <lora:x:1>, b"` becomes `"a, , b"`, which is what A1111 encodes.

    Args:
        prompt: a positive prompt (A1111 leaves tags in negative prompts as literal text).

    Returns:
        The prompt without tags and the tags in order of appearance.
    """
    tags: list[ExtraNetworkTag] = []

    def take(match: re.Match) -> str:
        positional: list[str] = []
        named: dict[str, str] = {}
        for argument in match.group(2).split(":"):
            name_value = argument.split("=", 2)
            if len(name_value) == 2:
                named[name_value[0]] = name_value[1]
            else:
                positional.append(argument)
        tags.append(ExtraNetworkTag(match.group(1), tuple(positional), named))
        return ""

    return _EXTRA_NETWORK_TAG.sub(take, prompt), tags


def split_composable(prompt: str) -> list[tuple[str, float]]:
    """Split a prompt on `AND` into sub-prompts with their `:weight`, as A1111's `get_multicond_prompt_list`.

    `"a cat AND a dog:0.5"` -> `[("a cat", 1.0), (" a dog", 0.5)]`. Each sub-prompt becomes its own cond
    row and CFG adds `weight * (cond_i - uncond)` for each. This comes before prompt editing in A1111, so
    `[x AND y:3]` is two sub-prompts, neither of them an edit.

    Returns:
        `(text, weight)` for each sub-prompt in order; a prompt without AND gives one pair.
    """
    composable = []
    for subprompt in _AND.split(prompt):
        text, weight = _SUBPROMPT_WEIGHT.fullmatch(subprompt).groups()
        composable.append((text, float(weight) if weight is not None else 1.0))
    return composable
