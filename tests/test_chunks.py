"""A1111's 75-token chunking, on hand-made token ids (BOS 1000, EOS 1001, comma 5)."""

import pytest

from engine.prompts.chunks import BREAK, Vocabulary, chunk_prompt


BOS, EOS, COMMA = 1000, 1001, 5
VOCAB = Vocabulary(bos=BOS, eos=EOS, comma=COMMA)


def ids(n, start=10):
    return list(range(start, start + n))


def test_empty_prompt_is_one_padded_chunk():
    (chunk,) = chunk_prompt([], VOCAB)
    assert chunk.tokens == [BOS] + [EOS] * 76
    assert chunk.multipliers == [1.0] * 77


def test_short_prompt_is_wrapped_and_padded_with_eos():
    (chunk,) = chunk_prompt([(ids(3), 1.0)], VOCAB)
    assert chunk.tokens[:5] == [BOS, 10, 11, 12, EOS]
    assert len(chunk.tokens) == 77 and chunk.tokens[-1] == EOS


def test_long_prompt_continues_in_a_second_chunk():
    chunks = chunk_prompt([(ids(80), 1.0)], VOCAB)
    assert [len(c.tokens) for c in chunks] == [77, 77]
    assert chunks[0].tokens[1:76] == ids(75)
    assert chunks[1].tokens[1:6] == ids(5, start=85)
    assert chunks[1].tokens[6:] == [EOS] * 71


def test_weights_follow_their_tokens_and_padding_weighs_one():
    (chunk,) = chunk_prompt([(ids(2), 1.1), (ids(1, start=50), 0.5)], VOCAB)
    assert chunk.multipliers[:5] == [1.0, 1.1, 1.1, 0.5, 1.0]


def test_break_starts_a_new_chunk():
    chunks = chunk_prompt([(ids(3), 1.0), (BREAK, -1), (ids(2, start=60), 1.0)], VOCAB)
    assert len(chunks) == 2
    assert chunks[0].tokens[1:5] == [10, 11, 12, EOS]
    assert chunks[1].tokens[1:4] == [60, 61, EOS]


def test_comma_backtrack_moves_the_last_phrase_to_the_next_chunk():
    # 70 words, a comma (position 70), then 10 more: the chunk fills at 75 with the comma 5 back.
    tokens = ids(70) + [COMMA] + ids(10, start=200)
    first, second = chunk_prompt([(tokens, 1.0)], VOCAB)
    assert first.tokens[1:72] == ids(70) + [COMMA]
    assert first.tokens[72:] == [EOS] * 5
    assert second.tokens[1:11] == ids(10, start=200)


@pytest.mark.parametrize("backtrack", [0, 3])
def test_no_backtrack_when_disabled_or_comma_too_far(backtrack):
    tokens = ids(70) + [COMMA] + ids(10, start=200)
    first, second = chunk_prompt([(tokens, 1.0)], VOCAB, comma_backtrack=backtrack)
    assert first.tokens[1:76] == ids(70) + [COMMA] + ids(4, start=200)
    assert second.tokens[1:7] == ids(6, start=204)


def test_textual_inversion_vectors_do_not_straddle_chunks():
    def find(token_ids, position):
        return ("bad", 10, 1) if token_ids[position] == 99 else None

    vocab = Vocabulary(bos=BOS, eos=EOS, comma=COMMA, find_embedding=find)
    first, second = chunk_prompt([(ids(70) + [99], 1.2)], vocab)
    assert first.tokens[71:] == [EOS] * 6
    assert second.tokens[1:11] == [0] * 10
    assert second.multipliers[1:11] == [1.2] * 10
    assert second.fixes == [(1, "bad")]
