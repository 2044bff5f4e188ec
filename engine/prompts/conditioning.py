"""Prompts of one batch → the conditioning the UNet sees at every model call of a pass (A1111 `setup_conds`)."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.prompts.encode import Parser, PromptEncoder, TextEmbedding
from engine.prompts.options import PassShape, PromptOptions
from engine.prompts.parser import get_prompt_schedule, split_composable
from engine.sampling.guidance import StepConditioning


@dataclass(frozen=True)
class ScheduledEmbedding:
    """One prompt's schedule variants, encoded together (A1111 `ScheduledPromptConditioning` list)."""

    ends: tuple[int, ...]  # last step (counted model call) of each variant
    embeds: torch.Tensor  # (variants, tokens, C)
    pooled: torch.Tensor | None  # (variants, P), SDXL only

    def variant_at(self, call_index: int) -> int:
        """A1111 `reconstruct_cond_batch`: the first variant whose end step is >= the call index (0-based,
        so `[a:b:10]` uses `a` for calls 0..10); past the last end, the first variant."""
        return next((index for index, end in enumerate(self.ends) if call_index <= end), 0)


class PassConditioning:
    """The `ConditioningAt` of one pass (call it with a model-call index) and what encoding reports.

    Attributes:
        extra_generation_params: infotext entries A1111 adds while encoding (`TI hashes`, `Emphasis`).
        notes: messages for the response, e.g. an embedding the prompt names that this model cannot use.
    """

    def __init__(
        self,
        positives: list[list[tuple[ScheduledEmbedding, float]]],
        negatives: list[ScheduledEmbedding],
        time_ids: torch.Tensor | None,
        extra_generation_params: dict[str, str],
        notes: tuple[str, ...],
        negative_time_ids: torch.Tensor | None = None,
        pad_with: torch.Tensor | None = None,
    ):
        self.positives = positives
        self.negatives = negatives
        self.time_ids = time_ids  # (1, 6), SDXL only; the refiner's (1, 5) hold the aesthetic score
        # The negative prompt's ids differ only for the refiner (A1111's low aesthetic score).
        self.negative_time_ids = time_ids if negative_time_ids is None else negative_time_ids
        self.extra_generation_params = extra_generation_params
        self.notes = notes
        # A1111 `pad_cond_uncond`: the empty prompt's embedding (1, 77, width) that evens out token counts.
        self.pad_with = pad_with
        self._last: tuple[tuple, StepConditioning] | None = None

    def __call__(self, call_index: int) -> StepConditioning:
        picks = (
            tuple(scheduled.variant_at(call_index) for rows in self.positives for scheduled, _ in rows),
            tuple(scheduled.variant_at(call_index) for scheduled in self.negatives),
        )
        # Consecutive calls mostly share their variants; keep only the latest to bound memory.
        if self._last is None or self._last[0] != picks:
            self._last = (picks, self._assemble(picks))
        return self._last[1]

    def _assemble(self, picks: tuple) -> StepConditioning:
        cond_rows = [scheduled for rows in self.positives for scheduled, _ in rows]
        composition, row = [], 0
        for rows in self.positives:
            composition.append(tuple((row + index, weight) for index, (_, weight) in enumerate(rows)))
            row += len(rows)
        cond, cond_pooled = _stack(cond_rows, picks[0])
        uncond, uncond_pooled = _stack(self.negatives, picks[1])
        if self.pad_with is not None and cond.shape[1] != uncond.shape[1]:
            cond, uncond = pad_to_same_length(cond, uncond, self.pad_with)
            self.extra_generation_params["Pad conds"] = True  # A1111's infotext entry
        plain = all(len(rows) == 1 and rows[0][1] == 1.0 for rows in self.positives)
        return StepConditioning(
            cond,
            uncond,
            cond_added=self._added(cond_pooled, self.time_ids),
            uncond_added=self._added(uncond_pooled, self.negative_time_ids),
            composition=None if plain else tuple(composition),
        )

    @staticmethod
    def _added(pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
        if time_ids is None:
            return None
        return {"text_embeds": pooled, "time_ids": time_ids.expand(len(pooled), -1)}


def pad_to_same_length(cond: torch.Tensor, uncond: torch.Tensor, empty: torch.Tensor):
    """A1111 `pad_cond_uncond` (`sd_samplers_cfg_denoiser.pad_cond`, AGPL-3.0): append whole empty-prompt
    chunks to the shorter of cond and uncond so that they share one UNet batch."""
    repeats = (cond.shape[1] - uncond.shape[1]) // empty.shape[1]
    if repeats > 0:
        uncond = torch.cat([uncond, empty.to(uncond).repeat(uncond.shape[0], repeats, 1)], dim=1)
    elif repeats < 0:
        cond = torch.cat([cond, empty.to(cond).repeat(cond.shape[0], -repeats, 1)], dim=1)
    return cond, uncond


def _stack(scheduled: Sequence[ScheduledEmbedding], picks: Sequence[int]):
    """Rows at the picked variants; shorter ones padded by repeating their last vector (A1111 `stack_conds`)."""
    rows = [item.embeds[pick] for item, pick in zip(scheduled, picks, strict=True)]
    longest = max(len(row) for row in rows)
    rows = [
        torch.cat([row, row[-1:].expand(longest - len(row), -1)]) if len(row) < longest else row
        for row in rows
    ]
    pooled = [
        item.pooled[pick] for item, pick in zip(scheduled, picks, strict=True) if item.pooled is not None
    ]
    return torch.stack(rows), (torch.stack(pooled) if pooled else None)


class _EncodingLog:
    """What A1111's text encoders write into `extra_generation_params` and comments, call by call."""

    def __init__(self, emphasis: str):
        self.emphasis = emphasis
        self.ti_hashes: list[str] = []
        self.params: dict[str, str] = {}
        self.notes: dict[str, None] = {}

    def record(self, texts: Sequence[str], embedding: TextEmbedding) -> None:
        # Each encoder's forward (CLIP-L, then OpenCLIP-G on SDXL) puts its embeddings *before* the entries
        # already written (`sd_hijack_clip.forward`), so an SDXL embedding appears once per encoder.
        for used in embedding.used_embeddings:
            entries = [
                f"{item.name.replace(':', '').replace(',', '')}: {item.shorthash}"
                for item in used
                if item.shorthash
            ]
            self.ti_hashes[:0] = entries
        if self.ti_hashes:
            self.params["TI hashes"] = ", ".join(self.ti_hashes)
        if self.emphasis != "Original" and any("(" in text or "[" in text for text in texts):
            self.params["Emphasis"] = self.emphasis
        for name, reason in embedding.skipped_embeddings.items():
            self.notes[f"textual inversion embedding {name!r} left as plain text: {reason}"] = None


def build_conditioning(
    pipe,
    prompts: list[str],
    negative_prompts: list[str],
    shape: PassShape,
    options: PromptOptions,
    parse: Parser,
    *,
    embeddings=None,
) -> PassConditioning:
    """Encode a batch's prompts for one pass as A1111's `setup_conds` does.

    Negative prompts first, then positive `AND` sub-prompts; each distinct text is encoded once with all
    its prompt-editing variants together; prompt edits are scheduled over `shape.schedule_steps` (model
    calls), continuing the first pass on a hires pass.

    Args:
        pipe: an `A1111Pipeline` (its `prompt_encoder` gives the text encoders).
        prompts, negative_prompts: one per image of the batch, extra-network tags already removed.
        shape: the pass (size for SDXL, steps and how they are counted).
        options: A1111 text options (`override_settings`).
        parse: the attention parser.
        embeddings: an `EmbeddingDatabase` (refreshed by the caller) or None for no textual inversion.

    Returns:
        A PassConditioning: call it with a model-call index for that call's StepConditioning.
    """
    if len(prompts) != len(negative_prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(negative_prompts)} negative prompts")
    slots = pipe.prompt_encoder(parse, options.comma_padding_backtrack).slots
    encoder = PromptEncoder(
        slots,
        parse,
        options.comma_padding_backtrack,
        emphasis=options.emphasis,
        embeddings=embeddings,
        sdxl_clip_l_skip=options.sdxl_clip_l_skip,
    )
    log = _EncodingLog(options.emphasis)

    def encode_each(texts: Sequence[str], zero_if_empty: bool) -> dict[str, ScheduledEmbedding]:
        encoded: dict[str, ScheduledEmbedding] = {}
        for text in dict.fromkeys(texts):  # A1111 encodes each distinct prompt once
            schedule = _schedule(text, shape)
            variants = [variant for _, variant in schedule]
            embedding = encoder.encode(variants, options.clip_skip)
            log.record(variants, embedding)
            embeds, pooled = embedding.embeds, embedding.pooled
            if zero_if_empty and all(variant == "" for variant in variants):
                # A1111 (sd_models_xl) feeds zeros for an empty SDXL negative prompt, pooled vector included.
                embeds, pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
            encoded[text] = ScheduledEmbedding(tuple(end for end, _ in schedule), embeds, pooled)
        return encoded

    negatives = encode_each(negative_prompts, zero_if_empty=pipe.is_sdxl)
    composable = [split_composable(prompt) for prompt in prompts]
    positives = encode_each([text for parts in composable for text, _ in parts], zero_if_empty=False)
    return PassConditioning(
        positives=[[(positives[text], weight) for text, weight in parts] for parts in composable],
        negatives=[negatives[text] for text in negative_prompts],
        time_ids=_time_ids(pipe, shape, options.aesthetic_score),
        negative_time_ids=_time_ids(pipe, shape, options.negative_aesthetic_score),
        extra_generation_params=log.params,
        notes=tuple(log.notes),
        # A1111's `cond_stage_model_empty_prompt`: "" encoded as a prompt (not the zeroed SDXL negative).
        pad_with=encoder.encode([""], options.clip_skip).embeds if options.pad_cond_uncond else None,
    )


def _time_ids(pipe, shape: PassShape, aesthetic_score: float) -> torch.Tensor | None:
    if not pipe.is_sdxl:
        return None
    return pipe.sdxl_time_ids(shape.height, shape.width, 1, aesthetic_score)


def _schedule(text: str, shape: PassShape) -> list[list]:
    if shape.hires:
        return get_prompt_schedule(text, shape.firstpass_steps, shape.schedule_steps)
    return get_prompt_schedule(text, shape.schedule_steps)
