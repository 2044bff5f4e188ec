"""Dynamic Prompts' prompt generation: a template (`{a|b}`, `{2$$a|b|c}`, `__name__`…) → one prompt per image.

Follows sd-dynamic-prompts v2.17.1 (adieyal/sd-dynamic-prompts, MIT: `dynamic_prompting.py` `process`,
`helpers.py` `get_seeds` / `generate_prompts`, `generator_builder.py`) on the library it uses, `dynamicprompts`
0.31 (MIT): random mode draws image i's prompt from a `Random` re-seeded with that image's seed, the negative
prompt from a second generator of its own; combinatorial mode enumerates every combination (or the first
`max_generations`), crossed with every negative combination.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import cycle, islice, product
from pathlib import Path
from typing import Any

from dynamicprompts.generators import (
    BatchedCombinatorialPromptGenerator,
    CombinatorialPromptGenerator,
    RandomPromptGenerator,
)
from dynamicprompts.parser.parse import ParserConfig
from dynamicprompts.wildcards import WildcardManager

from engine.prompts.dynamic_titles import DYNAMIC_PROMPTS_KEYS, DYNAMIC_PROMPTS_TITLE, DYNAMIC_PROMPTS_VERSION
from engine.prompts.wildcards import UnknownWildcard


__all__ = ["DYNAMIC_PROMPTS_KEYS", "DYNAMIC_PROMPTS_TITLE", "DYNAMIC_PROMPTS_VERSION", "DynamicPromptsOptions",
           "generate_prompts"]


class StrictWildcardManager(WildcardManager):
    """The library's manager, except that a wildcard matching no file raises `UnknownWildcard` where the
    library would leave `__name__` in the prompt."""

    def get_values(self, wildcard: str):
        values = super().get_values(wildcard)
        if not values:
            raise UnknownWildcard(wildcard, self.path, sorted(self.get_collection_names()))
        return values




@dataclass(frozen=True)
class DynamicPromptsOptions:
    """The script's args this worker runs (the others are refused where the args are read) and the
    extension's settings (`dp_*` options)."""

    combinatorial: bool = False
    combinatorial_batches: int = 1
    max_generations: int = 0  # combinatorial: 0 = every combination
    fixed_seed: bool = False  # every image gets the first seed (and so the same random prompt)
    unlink_seed_from_prompt: bool = False  # prompts drawn from an unseeded generator
    ignore_whitespace: bool = False
    variant_start: str = "{"
    variant_end: str = "}"
    wildcard_wrap: str = "__"
    dedup_wildcards: bool = True
    sort_wildcards: bool = True
    shuffle_wildcards: bool = False

    @classmethod
    def from_settings(cls, settings: dict[str, Any], **script_args) -> "DynamicPromptsOptions":
        """`script_args` (the fields above) with the extension's A1111 options from `settings`."""
        return cls(
            **script_args,
            ignore_whitespace=settings.get("dp_ignore_whitespace", False),
            variant_start=settings.get("dp_parser_variant_start", "{"),
            variant_end=settings.get("dp_parser_variant_end", "}"),
            wildcard_wrap=settings.get("dp_parser_wildcard_wrap", "__"),
            dedup_wildcards=not settings.get("dp_wildcard_manager_no_dedupe", False),
            sort_wildcards=not settings.get("dp_wildcard_manager_no_sort", False),
            shuffle_wildcards=settings.get("dp_wildcard_manager_shuffle", False),
        )


@dataclass(frozen=True)
class GeneratedPrompts:
    """One prompt, negative prompt, seed and subseed per image (their count may differ from the request's
    images in combinatorial mode)."""

    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    subseeds: tuple[int, ...]


def generate_prompts(
    template: str,
    negative_template: str,
    options: DynamicPromptsOptions,
    count: int,
    seed: int,
    subseed: int,
    subseed_strength: float,
    wildcards: Path,
) -> GeneratedPrompts:
    """The extension's `process` on a request of `count` images whose first seed and subseed are given.

    Raises:
        UnknownWildcard: a `__name__` with no file in `wildcards`.
        ValueError: combinatorial seeds that cannot be split into `combinatorial_batches` equal batches.
    """
    manager = StrictWildcardManager(wildcards, wildcard_wrap=options.wildcard_wrap)
    manager.dedup_wildcards = options.dedup_wildcards
    manager.sort_wildcards = options.sort_wildcards
    manager.shuffle_wildcards = options.shuffle_wildcards
    # A variation seed freezes the prompt: every image gets the same one (`should_freeze_prompt`).
    frozen = subseed_strength > 0
    wanted: int | None = count
    if options.combinatorial:
        wanted = options.max_generations or None
    seeds = None
    if wanted and not options.unlink_seed_from_prompt:
        seeds, _ = _seeds(options, wanted, seed, subseed, subseed_strength)
    # Two generators built alike, each with its own Random seeded with the first seed (`create_generator`).
    prompts = _generate(_generator(manager, options, seed), template, wanted, seeds, frozen) or [""]
    negative_seeds = seeds if negative_template else None
    try:
        negatives = _generate(_generator(manager, options, seed), negative_template, wanted, negative_seeds, frozen)
    except UnknownWildcard as exc:
        exc.field = "negative_prompt"
        raise
    negatives = negatives or [""]
    if wanted is None:
        prompts, negatives = (list(side) for side in zip(*product(prompts, negatives), strict=True))
    else:
        negatives = list(islice(cycle(negatives), wanted))
    all_seeds, all_subseeds = _seeds(options, len(prompts), seed, subseed, subseed_strength)
    return GeneratedPrompts(tuple(prompts), tuple(negatives), tuple(all_seeds), tuple(all_subseeds))


def _generator(manager: StrictWildcardManager, options: DynamicPromptsOptions, seed: int):
    parser_config = ParserConfig(
        variant_start=options.variant_start, variant_end=options.variant_end, wildcard_wrap=options.wildcard_wrap
    )
    if options.combinatorial:
        return BatchedCombinatorialPromptGenerator(
            CombinatorialPromptGenerator(
                manager, parser_config=parser_config, ignore_whitespace=options.ignore_whitespace
            ),
            batches=options.combinatorial_batches,
        )
    return RandomPromptGenerator(
        manager,
        seed=seed,
        parser_config=parser_config,
        unlink_seed_from_prompt=options.unlink_seed_from_prompt,
        ignore_whitespace=options.ignore_whitespace,
    )


def _generate(generator, template: str, wanted: int | None, seeds: Sequence[int] | None, frozen: bool) -> list[str]:
    if frozen:
        # The extension's FrozenPromptGenerator: one prompt, without the seeds, repeated.
        return generator.generate(template, 1) * (wanted or 1)
    return generator.generate(template, wanted, seeds=list(seeds) if seeds else None)


def _seeds(
    options: DynamicPromptsOptions, count: int, seed: int, subseed: int, subseed_strength: float
) -> tuple[list[int], list[int]]:
    """The extension's `get_seeds`: A1111's seed + i (the same seed under a variation strength) and
    subseed + i, or with "Fixed seed" the first seed for all (combinatorial: seed + batch index per batch)."""
    if options.fixed_seed:
        if not options.combinatorial:
            return [seed] * count, [subseed] * count
        batches = options.combinatorial_batches
        if count % batches:
            raise ValueError(f"{count} prompts cannot be split into {batches} combinatorial batches")
        return [seed + batch for batch in range(batches) for _ in range(count // batches)], [subseed] * count
    step = 1 if subseed_strength == 0 else 0
    return [seed + i * step for i in range(count)], [subseed + i for i in range(count)]
