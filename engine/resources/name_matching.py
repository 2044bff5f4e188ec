"""How a name a client sends finds a model: A1111's and sd-webui-controlnet's matching rules."""

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

from engine.resources.entries import CheckpointEntry, ControlNetEntry, ControlNetMatch, first


logger = logging.getLogger(__name__)

_BRACKETED_HASH = re.compile(r"^(?P<base>.*?)\s*\[(?P<hash>[0-9a-fA-F]{8,64})\]\s*$")
_HASH_ID = re.compile(r"[0-9a-fA-F]{8}|[0-9a-fA-F]{10}|[0-9a-fA-F]{64}")


def split_hash(text: str) -> tuple[str, str | None]:
    """Split an A1111 title "name [hash]" into ("name", "hash"); ("name", None) when there is no hash."""
    found = _BRACKETED_HASH.match(text)
    return (found["base"], found["hash"].lower()) if found else (text, None)


def natural_key(text: str) -> list:
    """Sort key that orders "v2" before "v10", like A1111's `natural_sort_key`."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def normalise_name(name: str) -> str:
    # Windows clients send A1111 names with backslashes ("sub\\model.safetensors").
    return name.strip().replace("\\", "/")


def with_alias(entries: Iterable[Any], text: str) -> list:
    """Entries one of whose `aliases` equals `text`, the most specific alias first."""
    ranked = [(rank, index, entry) for index, entry in enumerate(entries)
              for rank, alias in enumerate(entry.aliases) if alias == text]
    return [entry for _, _, entry in sorted(ranked, key=lambda item: item[:2])]


def match_checkpoint(entries: Sequence[CheckpointEntry], query: str, closest: bool) -> CheckpointEntry | None:
    named = with_alias(entries, query)
    if named:
        return named[0]
    base, wanted = split_hash(query)
    named = with_alias(entries, base) if wanted else []
    if named:
        hit = next((e for e in named if e.matches_hash(wanted)), None)
        if hit is None:
            # A1111's closest match also drops a stale "[hash]" and resolves by name; we say so.
            logger.warning("checkpoint %r: the file's hash differs from [%s]; using it by name", base, wanted)
        return hit or named[0]
    if _HASH_ID.fullmatch(query):
        # The legacy hash is cheap to compute; sha256 ids match only once known, as in A1111's alias table.
        hit = next((e for e in entries if e.matches_hash(query, compute=len(query) == 8)), None)
        if hit is not None:
            return hit
    return closest_title(entries, query) if closest else None


def closest_title(entries: Sequence[CheckpointEntry], query: str) -> CheckpointEntry | None:
    """A1111 `get_closet_checkpoint_match`: shortest title containing the text, then without its "[hash]"."""
    for text in (query, split_hash(query)[0]):
        found = sorted((e for e in entries if text in e.title), key=lambda e: len(e.title))
        if found:
            return found[0]
    return None


def match_controlnet(entries: Sequence[ControlNetEntry], query: str) -> ControlNetMatch | None:
    base, wanted = split_hash(query)
    named = with_alias(entries, base.lower())  # sd-webui-controlnet compares stems in lower case
    if wanted is None:
        entry = first(named) or closest_stem(entries, base)
        return ControlNetMatch(entry, None) if entry else None
    same_hash = [e for e in named if e.matches_hash(wanted)] or [e for e in entries if e.matches_hash(wanted)]
    if same_hash:
        return ControlNetMatch(same_hash[0], True)
    entry = first(named) or closest_stem(entries, base)
    if entry is None:
        return None
    logger.warning("controlnet %r: no model has hash [%s]; using %s", query, wanted, entry.title)
    return ControlNetMatch(entry, False)


def closest_stem(entries: Sequence[ControlNetEntry], base: str) -> ControlNetEntry | None:
    """sd-webui-controlnet `find_closest_lora_model_name`: the shortest stem containing the text."""
    text = base.lower()
    found = sorted((e for e in entries if text and text in e.name.lower()), key=lambda e: len(e.name))
    return first(found)
