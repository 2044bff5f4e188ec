"""A1111 prompt editing (`[from:to:when]`) and alternation (`[a|b]`) expanded into per-step prompt texts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine.errors import RequestError


# A1111 (`prompt_parser.get_learned_conditioning_prompt_schedules`) reads prompts with a lark grammar:
# plain text, `(p)`, `(p:p)`, `[p]`, `[p:when]`, `[p:p:when]`, `[p|p|...]`, where each `p` is itself such a
# prompt, and at the top level any of `[ ] ( ) :` may also stand alone as literal characters. A bracket is
# therefore a construct exactly when its content fits one of those forms up to its matching close; this
# module finds those constructs in one left-to-right pass with a stack of open brackets. When a closing
# bracket could either end a construct or be a literal next to other literal brackets (`[a:3]]`), lark's
# choice depends on Python's hash seed; we always take the construct, one of A1111's possible answers.

_SYNTAX = "[]():|"
_PLAIN_RUN = re.compile(r"[^\\\[\]():|]+")

# What completes `[...:` as an edit: optional whitespace, a number as lark's SIGNED_NUMBER reads it (digits
# with an optional fraction and exponent, ASCII digits only), optional whitespace, `]`.
_WHEN_TAIL = re.compile(
    r"\s*([+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+))\s*\]"
)

# A1111's parser recurses once per nested construct and dies with RecursionError at about 245 levels
# (less when called from deeper in a stack); we stop a little earlier with a clear message.
MAX_NESTING = 200


@dataclass(frozen=True)
class Edit:
    """`[before:after:when]`; `before` is None for `[after:when]`; `when` is the number as written."""

    before: tuple | None
    after: tuple
    when: str


@dataclass(frozen=True)
class Alternation:
    """`[a|b|...]`: option `(step - 1) % len(options)` is used at each step."""

    options: tuple


@dataclass
class _OpenBracket:
    """A bracket whose close has not been seen yet: the prompts inside it and what separated them."""

    opener: str
    parts: list[list] = field(default_factory=lambda: [[]])
    separator: str = ""
    depth: int = 0  # deepest construct nesting inside it


class _Unparsable(Exception):
    """The prompt is outside A1111's grammar (a `|` outside `[...]`, a trailing backslash): used literally."""


# (opener, separator seen so far, character) -> what the character does to the innermost open bracket.
# Any combination not listed means the bracket is not a construct (e.g. `)` inside `[`, a second `:` in `(`).
_TRANSITIONS = {
    ("(", "", ")"): "close",
    ("(", "", ":"): "split",
    ("(", ":", ")"): "close",
    ("[", "", "]"): "close",
    ("[", "", "|"): "split",
    ("[", "|", "|"): "split",
    ("[", "|", "]"): "close_alternation",
    ("[", "", ":"): "edit_or_split",
    ("[", ":", ":"): "edit",
}


class _Parser:
    """One pass over a prompt; `pieces()` returns its top level as text and Edit/Alternation nodes."""

    def __init__(self, text: str):
        self.text = text
        self.open: list[_OpenBracket] = []
        self.top: list = []
        self.top_depth = 0

    def pieces(self) -> list:
        position = 0
        while position < len(self.text):
            position = self._step(position)
        self._abandon_open_brackets()
        if self.top_depth > MAX_NESTING:
            raise RequestError("prompt", f"brackets are nested more than {MAX_NESTING} levels deep")
        return self.top

    def _current(self) -> list:
        return self.open[-1].parts[-1] if self.open else self.top

    def _step(self, position: int) -> int:
        text, char = self.text, self.text[position]
        if char == "\\":
            # lark's plain text takes a backslash with the next character, any but a newline.
            if position + 1 == len(text) or text[position + 1] == "\n":
                raise _Unparsable
            self._current().append(text[position : position + 2])
            return position + 2
        if char not in _SYNTAX:
            run = _PLAIN_RUN.match(text, position)
            self._current().append(run.group(0))
            return run.end()
        if char in "([":
            self.open.append(_OpenBracket(char))
            return position + 1
        if not self.open:
            if char == "|":
                raise _Unparsable
            self.top.append(char)
            return position + 1
        return self._inside_bracket(char, position)

    def _inside_bracket(self, char: str, position: int) -> int:
        bracket = self.open[-1]
        action = _TRANSITIONS.get((bracket.opener, bracket.separator, char))
        if action in ("split", "edit_or_split"):
            tail = _WHEN_TAIL.match(self.text, position + 1) if action == "edit_or_split" else None
            if tail:
                self._close(Edit(None, tuple(bracket.parts[0]), tail.group(1)))
                return tail.end()
            bracket.separator = char
            bracket.parts.append([])
            return position + 1
        if action == "edit":
            tail = _WHEN_TAIL.match(self.text, position + 1)
            if tail:
                self._close(Edit(tuple(bracket.parts[0]), tuple(bracket.parts[1]), tail.group(1)))
                return tail.end()
        elif action == "close_alternation":
            self._close(Alternation(tuple(tuple(part) for part in bracket.parts)))
            return position + 1
        elif action == "close":
            self._close(_literal(bracket) + [char], construct=False)
            return position + 1
        # Not a construct, nor is any bracket still open around it (they contain it): all become text
        # and the character is read again at the top level.
        self._abandon_open_brackets()
        return position

    def _close(self, node, construct: bool = True) -> None:
        """Pop the innermost bracket, put what it became into the enclosing prompt, track nesting."""
        depth = self.open.pop().depth + 1
        if construct:
            self._current().append(node)
        else:
            self._current().extend(node)
        if self.open:
            self.open[-1].depth = max(self.open[-1].depth, depth)
        else:
            self.top_depth = max(self.top_depth, depth)

    def _abandon_open_brackets(self) -> None:
        for bracket in self.open:
            if bracket.separator == "|":
                raise _Unparsable
            self.top.extend(_literal(bracket))
            self.top_depth = max(self.top_depth, bracket.depth)
        self.open.clear()


def _literal(bracket: _OpenBracket) -> list:
    """The bracket's text as written (without its close): `(` and `[...]` emphasis are kept literally."""
    pieces = [bracket.opener, *bracket.parts[0]]
    for part in bracket.parts[1:]:
        pieces += [bracket.separator, *part]
    return pieces


@dataclass(frozen=True)
class _Timing:
    """How `when` numbers map to steps: A1111 offsets them by the first pass on a hires pass."""

    steps: int
    whole_offset: int = 0
    fraction_offset: float = 0.0


def _switch_step(edit: Edit, timing: _Timing) -> int:
    """Last step that still uses `before` (A1111: a number with "." is a fraction of the steps)."""
    value = float(edit.when)
    if "." in edit.when:
        value = (value - timing.fraction_offset) * timing.steps
    else:
        value = value - timing.whole_offset
    try:
        return min(timing.steps, int(value))
    except OverflowError:
        raise RequestError("prompt", f"prompt editing step {edit.when!r} is out of range") from None


def _switch_steps(pieces: list, timing: _Timing) -> list[int]:
    """Steps at which the text changes: every edit's step (also inside unused branches), every step
    when any alternation exists, and always the last step."""
    found = {timing.steps}
    pending = [pieces]
    while pending:
        for piece in pending.pop():
            if isinstance(piece, Edit):
                step = _switch_step(piece, timing)
                if step >= 1:
                    found.add(step)
                pending += [piece.after] + ([piece.before] if piece.before else [])
            elif isinstance(piece, Alternation):
                found.update(range(1, timing.steps + 1))
                pending += piece.options
    return sorted(found)


def _text_at(pieces: list, step: int, timing: _Timing) -> str:
    out: list[str] = []
    pending = [iter(pieces)]
    while pending:
        piece = next(pending[-1], None)
        if piece is None:
            pending.pop()
        elif isinstance(piece, str):
            out.append(piece)
        elif isinstance(piece, Edit):
            chosen = piece.before if step <= _switch_step(piece, timing) else piece.after
            pending.append(iter(chosen or ()))
        else:
            pending.append(iter(piece.options[(step - 1) % len(piece.options)]))
    return "".join(out)


def _check_steps(field_name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(field_name, f"must be a whole number of steps >= 1, got {value!r}")


def get_prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None) -> list[list]:
    """Expand prompt editing and alternation into the text to use up to each step, as A1111 does.

    Same result as A1111's `get_learned_conditioning_prompt_schedules([prompt], steps, hires_steps)[0]`
    with the default `use_old_scheduling=False`: `[from:to:when]`, `[to:when]`, `[from::when]` switch
    after step `when` (a number containing "." is a fraction of the steps, else an absolute step);
    `[a|b]` cycles every step. A prompt outside the grammar is used literally. Emphasis brackets are left
    in the text for `parse_prompt_attention`. Split `AND` sub-prompts first (A1111 does).

    Args:
        prompt: one prompt or `AND` sub-prompt.
        steps: denoiser evaluations of the (first) pass, >= 1.
        hires_steps: steps of the hires pass, or None. When given, the schedule covers the hires pass:
            whole numbers are offset by `steps` and fractions by 1.0 (so 1.5 is half-way into it).

    Returns:
        `[[end_step, text], ...]` sorted by step; each text applies up to and including its end_step.

    Raises:
        RequestError: invalid step counts, a step number too large for a float, or nesting deeper than
            MAX_NESTING (A1111 raises in those cases).
    """
    _check_steps("steps", steps)
    if hires_steps is None:
        timing = _Timing(steps)
    else:
        _check_steps("hr_second_pass_steps", hires_steps)
        timing = _Timing(hires_steps, whole_offset=steps, fraction_offset=1.0)
    try:
        pieces = _Parser(prompt).pieces()
    except _Unparsable:
        return [[timing.steps, prompt]]
    return [[step, _text_at(pieces, step, timing)] for step in _switch_steps(pieces, timing)]
