"""A1111 attention syntax (`(x)`, `[x]`, `(x:1.3)`, escapes, BREAK) parsed into `[text, weight]` runs."""

import re

from engine.errors import RequestError


# Factors of A1111's `prompt_parser.parse_prompt_attention`: `(x)` multiplies by 1.1, `[x]` divides by 1.1.
# The square factor is kept as the quotient `1 / 1.1` because A1111 multiplies by that float, and weights
# must match it bit for bit (runs are merged by exact float equality).
ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1

# One token per match, alternatives tried in A1111's order: an escaped bracket or backslash, any other
# backslash (A1111 keeps what follows it, i.e. nothing), an opening bracket, a close carrying a weight
# `:1.3)`, a bare close, a run of ordinary text (`|` and BREAK included), a stray colon. `\d` is Unicode
# aware as in A1111, and `[.\d]+` may hold text that is no number ("1.2.3"): A1111 then fails in float().
_TOKEN = re.compile(
    r"""
      (?P<escape>\\[()\[\]\\])
    | (?P<backslash>\\)
    | (?P<open>[(\[])
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+)
    | (?P<colon>:)
    """,
    re.VERBOSE,
)

# BREAK only as an uppercase whole word; the spaces around it go with it (A1111 `re_break`).
_BREAK = re.compile(r"\s*\bBREAK\b\s*")

# The marker A1111 puts in the run list for BREAK; `sd_hijack_clip` starts a new 75-token chunk on it.
BREAK_WEIGHT = -1


def parse_prompt_attention(text: str) -> list[list]:
    """Split a prompt into runs of text with their attention weight, exactly as A1111 does.

    `(x)` ×1.1, `[x]` ÷1.1, `(x:w)` ×w, nesting multiplies, an unclosed bracket applies to the end of
    the prompt, a close without an opener is literal text, `\\(` `\\)` `\\[` `\\]` `\\\\` are literal
    characters and any other backslash is dropped. `BREAK` becomes the run `["BREAK", -1]` (its weight is
    multiplied too when it sits inside brackets, as in A1111). Neighbouring runs of equal weight are merged.

    The A1111 emphasis mode "None" does not call this function: its caller uses `[[text, 1.0]]`.

    Args:
        text: one prompt (after `AND` splitting and prompt editing).

    Returns:
        A list of `[text, weight]` pairs; `[["", 1.0]]` when nothing is left.

    Raises:
        RequestError: a weighted close holds no number, e.g. `(x:1.2.3)`, where A1111 raises ValueError.
    """
    runs: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    for token in _TOKEN.finditer(text):
        kind = token.lastgroup
        if kind == "escape":
            runs.append([token.group(0)[1], 1.0])
        elif kind == "backslash":
            runs.append(["", 1.0])
        elif kind == "open":
            (open_round if token.group(0) == "(" else open_square).append(len(runs))
        elif kind == "weight" and open_round:
            _scale_from(runs, open_round.pop(), _weight_value(token))
        elif token.group(0) == ")" and open_round:
            _scale_from(runs, open_round.pop(), ROUND_FACTOR)
        elif token.group(0) == "]" and open_square:
            _scale_from(runs, open_square.pop(), SQUARE_FACTOR)
        else:
            _append_text(runs, token.group(0))

    # Unclosed openers apply to everything after them: all round ones first, then the square ones,
    # each in the order they were opened (the order fixes the float result).
    for start in open_round:
        _scale_from(runs, start, ROUND_FACTOR)
    for start in open_square:
        _scale_from(runs, start, SQUARE_FACTOR)

    return _merge_equal_weights(runs) if runs else [["", 1.0]]


def _weight_value(token: re.Match) -> float:
    written = token.group("weight")
    try:
        return float(written)
    except ValueError:
        raise RequestError(
            "prompt",
            f"attention weight {written!r} in {token.group(0)!r} is not a number; write e.g. (text:1.2)",
        ) from None


def _scale_from(runs: list[list], start: int, factor: float) -> None:
    """Multiply the weight of every run from `start` to the end (what a closing bracket covers)."""
    for run in runs[start:]:
        run[1] *= factor


def _append_text(runs: list[list], text: str) -> None:
    """Append literal text, turning each BREAK into its marker run (the text around it may be empty)."""
    for index, part in enumerate(_BREAK.split(text)):
        if index:
            runs.append(["BREAK", BREAK_WEIGHT])
        runs.append([part, 1.0])


def _merge_equal_weights(runs: list[list]) -> list[list]:
    merged = [runs[0]]
    for run in runs[1:]:
        if run[1] == merged[-1][1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return merged
