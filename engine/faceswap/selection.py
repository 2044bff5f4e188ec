"""Which source face goes onto which target face, as ReActor chooses them. Pure: faces are any objects with
a `bbox` (x1, y1, x2, y2) and insightface's `gender` (0 female, 1 male; None when unknown).

ReActor (Gourieff/sd-webui-reactor `scripts/reactor_swapper.py`, AGPL-3.0) numbers the faces of an image from
left to right (sorted by the box's left edge), pairs the i-th target index with the i-th source index (or with
the only source index for every target), and skips a pair whose face fails the gender filter.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import RequestError


# ReActor's gender radios: 1 "Female Only", 2 "Male Only" → insightface's gender value they accept.
GENDER_WANTED = {1: 0, 2: 1}
GENDER_NAMES = {0: "female", 1: "male"}


@dataclass(frozen=True)
class FacePair:
    """One swap: `source` face onto `target` face (`target_index` in the left-to-right order)."""

    source: Any
    target: Any
    target_index: int


def left_to_right(faces: Sequence[Any]) -> list[Any]:
    """ReActor's face order: by the left edge of the box."""
    return sorted(faces, key=lambda face: float(face.bbox[0]))


def gender_matches(face: Any, wanted: int) -> bool:
    """Whether `face` passes ReActor's gender filter `wanted` (0 = any gender)."""
    return wanted == 0 or getattr(face, "gender", None) == GENDER_WANTED[wanted]


def check_index_counts(source_indices: Sequence[int], target_indices: Sequence[int], where: str) -> None:
    """ReActor swaps only when the source indices are one, or as many as the target indices.

    Raises:
        RequestError: otherwise (ReActor logs it and leaves the image unchanged).
    """
    if len(source_indices) not in (1, len(target_indices)):
        raise RequestError(where, f"gives {len(source_indices)} source faces for {len(target_indices)} target "
                                  "faces; send one source face or one per target face")


def source_faces_for(
    faces: Sequence[Any], indices: Sequence[int], gender: int, where: str, image_field: str | None = None
) -> list[Any | None]:
    """The source face for each source index, None where it fails the gender filter.

    Args:
        where: the field named when an index has no face; `image_field` (default `where`) when none is found.

    Raises:
        RequestError: the source image has no face at an index (the client's own image: said at once).
    """
    ordered = left_to_right(faces)
    if not ordered:
        raise RequestError(image_field or where, "no face found in the ReActor source image")
    chosen = []
    for index in indices:
        if index >= len(ordered):
            raise RequestError(where, f"the ReActor source image has {len(ordered)} face(s) (numbered from 0, "
                                      f"left to right); there is no face {index}")
        face = ordered[index]
        chosen.append(face if gender_matches(face, gender) else None)
    return chosen


def pair_faces(
    sources: Sequence[Any | None], target_faces: Sequence[Any], target_indices: Sequence[int], gender: int
) -> tuple[list[FacePair], list[str]]:
    """The swaps to make on one image, in the order of `target_indices`, and notes on the ones skipped.

    Args:
        sources: from `source_faces_for`: one face (used for every target) or one per target index; None
            skips its pair (the source failed the gender filter).
        target_faces: the faces detected on the image, in any order.
        target_indices: which faces to swap, numbered left to right from 0.
        gender: the target gender filter (0 any, 1 female only, 2 male only).
    """
    ordered = left_to_right(target_faces)
    pairs, notes = [], []
    for position, index in enumerate(target_indices):
        source = sources[position] if len(sources) > 1 else sources[0]
        if source is None:
            notes.append(f"target face {index} skipped: its source face fails the source gender filter")
            continue
        if index >= len(ordered):
            notes.append(f"no target face {index} ({len(ordered)} found)")
            continue
        target = ordered[index]
        if not gender_matches(target, gender):
            notes.append(f"target face {index} skipped: not {GENDER_NAMES[GENDER_WANTED[gender]]}")
            continue
        pairs.append(FacePair(source, target, index))
    return pairs, notes
