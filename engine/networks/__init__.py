"""Extra networks named in prompts: `<lora:name:te:unet>` tags read as A1111's Lora extension reads them. No torch."""

from collections.abc import Iterable
from dataclasses import dataclass

from engine.errors import RequestError, UnsupportedError
from engine.prompts.parser import ExtraNetworkTag


# A1111 registers the Lora extension for `<lora:…>` and, for old LyCORIS prompts, `<lyco:…>`.
LORA_KINDS = ("lora", "lyco")


@dataclass(frozen=True)
class LoraRequest:
    """One `<lora:…>` tag: the name as written and its text-encoder and UNet multipliers."""

    name: str
    te_multiplier: float = 1.0
    unet_multiplier: float = 1.0


def lora_requests(tags: Iterable[ExtraNetworkTag], field: str = "prompt") -> list[LoraRequest]:
    """The LoRA tags among extra-network tags, with A1111's defaults (`extra_networks_lora.activate`).

    `<lora:name>` → 1.0 / 1.0; `<lora:name:0.8>` → te = unet = 0.8; `<lora:name:0.8:0.5>` → te 0.8, unet 0.5;
    named `te=` and `unet=` override the positional values (`unet` defaults to the final `te`). `field` is
    the request field the tags came from, named in errors ("prompt", "hr_prompt", an ADetailer unit's…).

    Raises:
        RequestError: a tag without a name or with a multiplier that is not a number.
        UnsupportedError: `dyn=` (A1111's rank truncation for LyCORIS dynamic networks).
    """
    return [_request(tag, field) for tag in tags if tag.kind in LORA_KINDS]


def _request(tag: ExtraNetworkTag, field: str) -> LoraRequest:
    written = f"<{tag.kind}:{':'.join([*tag.positional, *(f'{k}={v}' for k, v in tag.named.items())])}>"
    if not tag.positional or not tag.positional[0].strip():
        raise RequestError(field, f"{written} names no LoRA; write <lora:name:weight>")
    if len(tag.positional) > 3 or "dyn" in tag.named:
        raise UnsupportedError(field, f"{written}: the dyn (dynamic rank) argument is not supported")
    te = _number(tag.positional[1], written, field) if len(tag.positional) > 1 else 1.0
    te = _number(tag.named["te"], written, field) if "te" in tag.named else te
    unet = _number(tag.positional[2], written, field) if len(tag.positional) > 2 else te
    unet = _number(tag.named["unet"], written, field) if "unet" in tag.named else unet
    return LoraRequest(tag.positional[0], te, unet)


def _number(text: str, written: str, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise RequestError(field, f"{written}: multiplier {text!r} is not a number") from None
