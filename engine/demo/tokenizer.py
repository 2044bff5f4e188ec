"""Write a CLIP tokenizer folder offline: byte-level vocabulary, no merges, so every character is one token."""

import json
import logging
from pathlib import Path


logger = logging.getLogger(__name__)

START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
# CLIP's BPE marks the last piece of a word with this suffix; with no merges that piece is one character.
END_OF_WORD = "</w>"
# SD1.5's tokenizer (and SDXL's first) pads with <|endoftext|>; SDXL's tokenizer_2 (OpenCLIP bigG) pads
# with "!", id 0 of the real vocabulary and of ours, because both start with the same 256 characters.
OPEN_CLIP_PAD = "!"
# Every Stable Diffusion text encoder has 77 positions; without this, padding to max length overflows.
MODEL_MAX_LENGTH = 77
MERGES_HEADER = "#version: 0.2"

# Bytes that byte-level BPE shows as themselves: printable Latin-1 except the space and soft hyphen.
_PRINTABLE_BYTE_RANGES = ((ord("!"), ord("~")), (ord("¡"), ord("¬")), (ord("®"), ord("ÿ")))
_BYTE_COUNT = 256


def byte_alphabet() -> list[str]:
    """The 256 characters byte-level BPE uses for the bytes, in the order CLIP's vocabulary lists them.

    Printable bytes come first as themselves; the other bytes (controls, space, ...) follow in byte order,
    shifted to code points 256 and up so that no byte shows as whitespace or a control character.
    """
    printable = [code for low, high in _PRINTABLE_BYTE_RANGES for code in range(low, high + 1)]
    shown = set(printable)
    others = [code for code in range(_BYTE_COUNT) if code not in shown]
    return [chr(code) for code in printable] + [chr(_BYTE_COUNT + rank) for rank in range(len(others))]


def clip_vocab() -> dict[str, int]:
    """Token → id: the 256 byte characters, the same with the end-of-word suffix, then start and end tokens."""
    alphabet = byte_alphabet()
    tokens = [*alphabet, *(char + END_OF_WORD for char in alphabet), START_OF_TEXT, END_OF_TEXT]
    return {token: index for index, token in enumerate(tokens)}


def write_clip_tokenizer(dest: Path, pad_token: str = END_OF_TEXT) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs that `CLIPTokenizer.from_pretrained` reads.

    Args:
        dest: folder to create (or overwrite the files of).
        pad_token: END_OF_TEXT as SD1.5's tokenizer, or OPEN_CLIP_PAD as SDXL's tokenizer_2.

    Returns:
        dest.
    """
    vocab = clip_vocab()
    if pad_token not in vocab:
        raise ValueError(
            f"pad_token {pad_token!r} is not in the vocabulary; use {END_OF_TEXT!r} or {OPEN_CLIP_PAD!r}"
        )
    special_tokens = {
        "bos_token": START_OF_TEXT,
        "eos_token": END_OF_TEXT,
        "unk_token": END_OF_TEXT,
        "pad_token": pad_token,
    }
    tokenizer_config = {
        **special_tokens,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "add_prefix_space": False,
    }
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text(MERGES_HEADER + "\n", encoding="utf-8")
    (dest / "special_tokens_map.json").write_text(json.dumps(special_tokens, indent=2), encoding="utf-8")
    (dest / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    logger.debug("wrote a %d-token CLIP tokenizer (pad %r) to %s", len(vocab), pad_token, dest)
    return dest
