"""Prompt handling: A1111 prompt syntax parsed exactly as A1111 parses it."""

from engine.prompts.parser import (
    ExtraNetworkTag,
    extract_extra_networks,
    get_prompt_schedule,
    parse_prompt_attention,
    split_composable,
)


__all__ = [
    "ExtraNetworkTag",
    "extract_extra_networks",
    "get_prompt_schedule",
    "parse_prompt_attention",
    "split_composable",
]
