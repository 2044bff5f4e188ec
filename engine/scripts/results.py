"""Joining the results of a script's generations into one A1111 response, as a script's `Processed` is."""

import json
from dataclasses import replace
from typing import Any

from PIL import Image

from engine.wire.info import quote


def combine(
    results: list,
    images: list[Image.Image],
    infotexts: list[str],
    *,
    index_of_first_image: int = 0,
    seeds: list[int] | None = None,
    info: dict[str, Any] | None = None,
    first_image_only: bool = False,
):
    """One `GenerationResult` holding `images` (grids first, then results) and the generations' work.

    The `info` is the first generation's (A1111 builds a script's `Processed` from its first or original
    `p`), with the per-image lists gathered from every generation and `infotexts` aligned with `images`.

    Args:
        results: the `GenerationResult`s of the script's generations, in order.
        images: what the response returns, in order.
        infotexts: one per image in `images` (a grid takes the infotext A1111 gives it).
        index_of_first_image: how many grids lead `images`.
        seeds: the seeds of the result images (default: every generation's, in order).
        info: keys to set in the info JSON over the gathered ones.
        first_image_only: gather only each generation's first image's prompt and seeds (X/Y/Z plot keeps
            one image per cell).
    """
    first = json.loads(results[0].info)
    gathered = {key: [] for key in ("all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds")}
    for result in results:
        loaded = json.loads(result.info)
        for key, values in gathered.items():
            values += loaded[key][:1] if first_image_only else loaded[key]
    if seeds is not None:
        gathered["all_seeds"] = list(seeds)
    merged = {
        **first,
        **gathered,
        "infotexts": list(infotexts),
        "index_of_first_image": index_of_first_image,
        **(info or {}),
    }
    warnings = []
    for result in results:
        warnings += [warning for warning in result.warnings if warning not in warnings]
    return replace(
        results[0],
        images=list(images),
        infotexts=list(infotexts),
        info=json.dumps(merged, ensure_ascii=False),
        warnings=warnings,
        unet_calls=sum(result.unet_calls for result in results),
        detected_maps=[],
    )


def infotext_with(infotext: str, extra: dict[str, Any]) -> str:
    """An infotext with `extra` "Key: value" pairs added before `Version`, as a script's
    `extra_generation_params` land there in A1111."""
    *head, settings = infotext.split("\n")
    pairs = ", ".join(f"{key}: {quote(value)}" for key, value in extra.items() if value is not None)
    marker = ", Version: "
    if marker in settings:
        before, after = settings.split(marker, 1)
        settings = f"{before}, {pairs}{marker}{after}"
    else:
        settings = f"{settings}, {pairs}"
    return "\n".join([*head, settings])
