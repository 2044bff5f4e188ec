"""A1111's 75-token chunking of a parsed prompt (`sd_hijack_clip.tokenize_line`), on token ids; no torch."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


CHUNK_LENGTH = 75  # tokens per chunk, before BOS/EOS make it the 77 CLIP expects
BREAK = "BREAK"


@dataclass
class Chunk:
    """One 77-token CLIP input: ids, a weight per id, and where textual-inversion vectors go."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    # (offset of the first placeholder *inside `tokens` after BOS was added*, embedding name)
    fixes: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Vocabulary:
    """The ids chunking needs, and how to spot a textual-inversion name in a run of ids."""

    bos: int
    eos: int
    comma: int | None
    # Given ids and a position, the (name, vector count, id count) of the embedding starting there.
    find_embedding: Callable[[Sequence[int], int], tuple[str, int, int] | None] = lambda ids, i: None


def chunk_prompt(
    fragments: Sequence[tuple[Sequence[int] | str, float]],
    vocab: Vocabulary,
    comma_backtrack: int = 20,
) -> list[Chunk]:
    """Pack weighted, already-tokenised fragments into A1111's chunks.

    Args:
        fragments: `(ids, weight)` per parsed fragment, each tokenised on its own as A1111 does; a
            fragment whose ids are the string "BREAK" starts a new chunk.
        vocab: BOS/EOS/comma ids and the textual-inversion matcher.
        comma_backtrack: `opts.comma_padding_backtrack`: when a chunk fills up, tokens after a comma
            this close to the end move to the next chunk.

    Returns:
        Chunks of exactly 77 ids (`[BOS] + 75 + [EOS]`, padded with EOS); at least one.
    """
    chunks: list[Chunk] = []
    current = Chunk()
    last_comma = -1

    def next_chunk() -> None:
        nonlocal current, last_comma
        padding = CHUNK_LENGTH - len(current.tokens)
        if padding > 0:
            current.tokens += [vocab.eos] * padding
            current.multipliers += [1.0] * padding
        current.tokens = [vocab.bos, *current.tokens, vocab.eos]
        current.multipliers = [1.0, *current.multipliers, 1.0]
        chunks.append(current)
        current = Chunk()
        last_comma = -1

    for ids, weight in fragments:
        if ids == BREAK and weight == -1:
            next_chunk()
            continue
        position = 0
        while position < len(ids):
            token = ids[position]
            if token == vocab.comma:
                last_comma = len(current.tokens)
            # A full chunk: move everything after a recent comma to the next chunk so phrases stay whole.
            elif (
                comma_backtrack != 0
                and len(current.tokens) == CHUNK_LENGTH
                and last_comma != -1
                and len(current.tokens) - last_comma <= comma_backtrack
            ):
                cut = last_comma + 1
                moved_tokens, moved_weights = current.tokens[cut:], current.multipliers[cut:]
                current.tokens, current.multipliers = current.tokens[:cut], current.multipliers[:cut]
                next_chunk()
                current.tokens, current.multipliers = moved_tokens, moved_weights
            if len(current.tokens) == CHUNK_LENGTH:
                next_chunk()

            embedding = vocab.find_embedding(ids, position)
            if embedding is None:
                current.tokens.append(token)
                current.multipliers.append(weight)
                position += 1
                continue
            name, vector_count, id_count = embedding
            # An embedding never straddles two chunks.
            if len(current.tokens) + vector_count > CHUNK_LENGTH:
                next_chunk()
            current.fixes.append((len(current.tokens) + 1, name))
            current.tokens += [0] * vector_count
            current.multipliers += [weight] * vector_count
            position += id_count

    if current.tokens or not chunks:
        next_chunk()
    return chunks
