"""Prompt text → CLIP conditioning the way A1111 builds it (`sd_hijack_clip`, `sd_emphasis`, `sd_models_xl`)."""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from engine.prompts.chunks import BREAK, Chunk, Vocabulary, chunk_prompt
from engine.prompts.embeddings import SDXL_KEYS, SINGLE_KEY, Embedding, EmbeddingMatcher, EmbeddingSet


# A parsed prompt: `(text, weight)` fragments, `("BREAK", -1)` between chunks.
Parser = Callable[[str], list[list]]


@dataclass(frozen=True)
class TextEmbedding:
    """Cross-attention context for a batch of prompts, plus SDXL's pooled vector."""

    embeds: torch.Tensor  # (B, 77·chunks, C)
    pooled: torch.Tensor | None = None  # (B, P), SDXL only
    # Per text encoder (in encoder order): the textual-inversion embeddings inserted, in order of first use.
    used_embeddings: tuple[tuple[Embedding, ...], ...] = ()
    # Embeddings the prompts name that this model cannot use (left as plain text): name -> reason.
    skipped_embeddings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClipSlot:
    """One CLIP text encoder as A1111 drives it."""

    tokenizer: object
    encoder: torch.nn.Module
    # A1111 pads OpenCLIP (SDXL's second encoder) with 0 after the first EOS, CLIP-L with EOS.
    pad_after_eos: int | None
    # SD1.5 honours CLIP skip; SDXL always takes the penultimate layer with no final layer norm.
    honours_clip_skip: bool
    pooled: bool = False
    # Which vectors of a textual-inversion file this encoder reads ("clip_l"/"clip_g" in SDXL files);
    # None: the single tensor for a one-encoder model, clip_l then clip_g for a two-encoder one.
    embedding_key: str | None = None


def _emphasis_original(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's default: scale each token by its weight, then restore the mean of the whole chunk tensor
    (all prompts encoded together, so schedule variants of one prompt share the normalisation)."""
    original_mean = hidden.mean()
    weighted = hidden * weights.unsqueeze(-1)
    return weighted * (original_mean / weighted.mean())


def _emphasis_multiply(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return hidden * weights.unsqueeze(-1)


def _emphasis_ignore(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return hidden


# A1111 `sd_emphasis`: "None" also switches the attention parser off (see PromptEncoder._fragments).
EMPHASIS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Original": _emphasis_original,
    "No norm": _emphasis_multiply,
    "Ignore": _emphasis_ignore,
    "None": _emphasis_ignore,
}


class _SlotOutput(NamedTuple):
    hidden: torch.Tensor  # (B, 77·chunks, C) after emphasis
    pooled: torch.Tensor | None
    used: tuple[Embedding, ...]
    matcher: EmbeddingMatcher | None


class PromptEncoder:
    """Encodes prompts for one loaded model: chunking, emphasis, CLIP skip, textual inversion, SDXL concat."""

    def __init__(
        self,
        slots: Sequence[ClipSlot],
        parse: Parser,
        comma_backtrack: int = 20,
        *,
        emphasis: str = "Original",
        embeddings=None,
        sdxl_clip_l_skip: bool = False,
    ):
        """
        Args:
            slots: the model's text encoders, CLIP-L first.
            parse: A1111's attention parser (`parse_prompt_attention`).
            comma_backtrack: `opts.comma_padding_backtrack`.
            emphasis: a key of EMPHASIS (A1111 `opts.emphasis`).
            embeddings: an `EmbeddingDatabase` or `EmbeddingSet` with the textual inversions, or None.
            sdxl_clip_l_skip: A1111 `opts.sdxl_clip_l_skip`.
        """
        if emphasis not in EMPHASIS:
            raise ValueError(f"unknown emphasis mode {emphasis!r}; valid: {list(EMPHASIS)}")
        self.slots = tuple(slots)
        self.parse = parse
        self.comma_backtrack = comma_backtrack
        self.emphasis = emphasis
        self.sdxl_clip_l_skip = sdxl_clip_l_skip
        self.embedding_keys = tuple(
            _embedding_key(slot, index, len(self.slots)) for index, slot in enumerate(self.slots)
        )
        self._embeddings = embeddings

    @property
    def embedding_width(self) -> int:
        """Token-embedding width summed over the encoders: the width a usable embedding must have."""
        return sum(slot.encoder.get_input_embeddings().embedding_dim for slot in self.slots)

    def usable_embeddings(self) -> EmbeddingSet | None:
        if self._embeddings is None or isinstance(self._embeddings, EmbeddingSet):
            return self._embeddings
        return self._embeddings.select(self.embedding_width, self.embedding_keys)

    def encode(self, prompts: Sequence[str], clip_skip: int = 1) -> TextEmbedding:
        """Encode texts together, as A1111's `get_learned_conditioning` encodes the schedule variants of one
        prompt: emphasis "Original" restores the mean over the whole batch chunk tensor.

        Args:
            prompts: texts to encode in one batch (A1111 passes one prompt's schedule variants).
            clip_skip: `CLIP_stop_at_last_layers`, 1..12 (SD1.5 only).
        """
        embeddings = self.usable_embeddings()
        results = [
            self._encode_slot(slot, key, prompts, clip_skip, embeddings)
            for slot, key in zip(self.slots, self.embedding_keys, strict=True)
        ]
        token_counts = {result.hidden.shape[1] for result in results}
        if len(token_counts) > 1:
            raise ValueError(
                f"the text encoders chunked the prompt differently ({sorted(token_counts)} tokens); "
                "their tokenizers must agree"
            )
        skipped: dict[str, str] = {}
        for result in results:
            skipped.update(result.matcher.mentioned_skipped if result.matcher is not None else {})
        return TextEmbedding(
            embeds=torch.cat([result.hidden for result in results], dim=-1),
            pooled=next((result.pooled for result in results if result.pooled is not None), None),
            used_embeddings=tuple(result.used for result in results),
            skipped_embeddings=skipped,
        )

    def _encode_slot(
        self,
        slot: ClipSlot,
        key: str,
        prompts: Sequence[str],
        clip_skip: int,
        embeddings: EmbeddingSet | None,
    ) -> "_SlotOutput":
        matcher = embeddings.matcher(slot.tokenizer) if embeddings is not None else None
        vocab = _vocabulary(slot.tokenizer, matcher)
        batch_chunks = [
            chunk_prompt(self._fragments(slot, prompt), vocab, self.comma_backtrack) for prompt in prompts
        ]
        # Chunk i of every prompt, for every i, in one encoder batch: rows are independent, and one call
        # instead of one per chunk index (A1111's loop) matters when the encoder's cost is mostly overhead.
        # Shorter prompts continue with empty chunks (BOS then EOS), as A1111's batch forward does.
        chunk_count = max(len(chunks) for chunks in batch_chunks)
        flat = [
            chunks[index] if index < len(chunks) else _empty_chunk(vocab)
            for index in range(chunk_count)
            for chunks in batch_chunks
        ]
        device = slot.encoder.device
        tokens = torch.tensor([chunk.tokens for chunk in flat], device=device)
        if slot.pad_after_eos is not None:
            tokens = _pad_after_first_eos(tokens, vocab.eos, slot.pad_after_eos)
        fixes = [chunk.fixes for chunk in flat]
        used = {name: matcher.embedding(name) for row_fixes in fixes for _, name in row_fixes}
        with _inserted_vectors(slot.encoder, fixes, matcher, key):
            hidden, pooled = self._run_encoder(slot, tokens, clip_skip)
        weights = torch.tensor([chunk.multipliers for chunk in flat], device=device, dtype=hidden.dtype)
        count = len(prompts)
        # Emphasis normalises each chunk index over all prompts together, as A1111's per-chunk forward.
        encoded = [
            EMPHASIS[self.emphasis](
                hidden[index * count : (index + 1) * count], weights[index * count : (index + 1) * count]
            )
            for index in range(chunk_count)
        ]
        # A1111 (SDXL): the first chunk's pooled output, taken before emphasis.
        first_pooled = pooled[:count] if pooled is not None else None
        return _SlotOutput(torch.cat(encoded, dim=1), first_pooled, tuple(used.values()), matcher)

    def _fragments(self, slot: ClipSlot, prompt: str) -> list[tuple[list[int] | str, float]]:
        """Tokenise each parsed fragment on its own (BPE never merges across a weight change), as A1111."""
        fragments = self.parse(prompt) if self.emphasis != "None" else [[prompt, 1.0]]
        texts = [text for text, weight in fragments if not (text == BREAK and weight == -1)]
        # Longer than 77 tokens is expected (A1111 chunks them): verbose=False keeps transformers from warning.
        ids = iter(
            slot.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
            if texts
            else []
        )
        return [
            (BREAK, -1) if text == BREAK and weight == -1 else (next(ids), weight)
            for text, weight in fragments
        ]

    def _run_encoder(self, slot: ClipSlot, tokens: torch.Tensor, clip_skip: int):
        output = slot.encoder(input_ids=tokens, output_hidden_states=True)
        if slot.honours_clip_skip:
            if clip_skip > 1:
                # A1111 SD1: final layer norm of the Nth hidden state from the end.
                text_model = getattr(slot.encoder, "text_model", slot.encoder)
                hidden = text_model.final_layer_norm(output.hidden_states[-clip_skip])
            else:
                hidden = output.last_hidden_state
        elif self.sdxl_clip_l_skip and not slot.pooled:
            # A1111 `sdxl_clip_l_skip` reaches SDXL's CLIP-L only: hidden_states[-N], no final layer norm.
            hidden = output.hidden_states[-clip_skip]
        else:
            hidden = output.hidden_states[-2]
        return hidden, (output.text_embeds if slot.pooled else None)


def _embedding_key(slot: ClipSlot, index: int, slot_count: int) -> str:
    if slot.embedding_key is not None:
        return slot.embedding_key
    return SINGLE_KEY if slot_count == 1 else SDXL_KEYS[index]


def _vocabulary(tokenizer, matcher: EmbeddingMatcher | None) -> Vocabulary:
    ids = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "comma": tokenizer.get_vocab().get(",</w>"),
    }
    return Vocabulary(**ids, find_embedding=matcher) if matcher is not None else Vocabulary(**ids)


def _empty_chunk(vocab: Vocabulary) -> Chunk:
    return Chunk(tokens=[vocab.bos] + [vocab.eos] * 76, multipliers=[1.0] * 77)


def _pad_after_first_eos(tokens: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    tokens = tokens.clone()
    for row in tokens:
        first_eos = int((row == eos).nonzero()[0])
        row[first_eos + 1 :] = pad
    return tokens


@contextmanager
def _inserted_vectors(
    encoder: torch.nn.Module, fixes: list[list[tuple[int, str]]], matcher: EmbeddingMatcher | None, key: str
) -> Iterator[None]:
    """Overwrite the token-embedding rows of textual-inversion placeholders with the embedding's vectors
    while `encoder` runs (A1111 `EmbeddingsWithFixes`). The placeholders keep id 0 in `input_ids`, so the
    EOS-based pooling still finds the real end of text."""
    if not any(fixes):
        yield
        return

    def overwrite(module, args, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for row, row_fixes in enumerate(fixes):
            for offset, name in row_fixes:
                vectors = matcher.embedding(name).vectors[key].to(device=output.device, dtype=output.dtype)
                count = min(len(vectors), output.shape[1] - offset)
                output[row, offset : offset + count] = vectors[:count]
        return output

    handle = encoder.get_input_embeddings().register_forward_hook(overwrite)
    try:
        yield
    finally:
        handle.remove()
