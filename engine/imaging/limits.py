"""How large and how many the images a payload sends may be, per kind of image field. No torch, no PIL."""

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on one kind of image field, checked before any pixel is decoded.

    Attributes:
        base64_chars: the longest base64 text (a `data:` prefix excluded) accepted for one image.
        pixels: the most pixels (width × height, read from the file's header) one image may have.
        images: the most images one field (a list such as `init_images`) may hold.
    """

    base64_chars: int = 64 * 2**20
    # Below Pillow's own decompression-bomb error (2 × 89,478,485 pixels), so this check is the one that fires.
    pixels: int = 8192 * 8192
    images: int = 16


# The kinds of image field, each configurable on its own (`IMAGE_LIMITS`); the fields each covers.
IMAGE_FIELD_KINDS: dict[str, str] = {
    "init_images": "img2img `init_images`",
    "mask": "img2img `mask`, `latent_mask`",
    "controlnet": "ControlNet/InstantID/IP-Adapter unit `image`/`input_image`/`mask`; `/controlnet/detect` inputs",
    "extras": "`/sdapi/v1/extra-single-image` `image`",
    "png_info": "`/sdapi/v1/png-info` `image`",
    "reactor": "ReActor `source_image` (`alwayson_scripts.reactor`), `/reactor/image` `source_image`/`target_image`",
}
LIMIT_NAMES = tuple(item.name for item in fields(ImageLimits))


def parse_image_limits(text: str, default: ImageLimits) -> dict[str, ImageLimits]:
    """Per-kind overrides written as `kind:name=value,name=value;kind:...`, e.g.
    `controlnet:pixels=4194304,images=2;mask:base64_chars=8000000`; what a kind leaves out is `default`'s.

    Raises:
        ValueError: an unknown kind or limit name, or a value that is not a positive integer.
    """
    limits: dict[str, ImageLimits] = {}
    for part in filter(None, (piece.strip() for piece in text.split(";"))):
        kind, _, assignments = part.partition(":")
        kind = kind.strip()
        if kind not in IMAGE_FIELD_KINDS:
            raise ValueError(f"IMAGE_LIMITS: unknown field kind {kind!r}; kinds: {', '.join(IMAGE_FIELD_KINDS)}")
        values: dict[str, int] = {}
        for assignment in filter(None, (piece.strip() for piece in assignments.split(","))):
            name, _, raw = assignment.partition("=")
            name = name.strip()
            if name not in LIMIT_NAMES:
                raise ValueError(f"IMAGE_LIMITS: unknown limit {name!r} for {kind}; limits: {', '.join(LIMIT_NAMES)}")
            if not raw.strip().isdigit() or int(raw) < 1:
                raise ValueError(f"IMAGE_LIMITS: {kind}:{name} must be a positive integer, got {raw.strip()!r}")
            values[name] = int(raw)
        limits[kind] = replace(limits.get(kind, default), **values)
    return limits


def limits_for(kind: str, default: ImageLimits, overrides: Mapping[str, ImageLimits]) -> ImageLimits:
    """The limits of one kind of image field: its override, else the default."""
    if kind not in IMAGE_FIELD_KINDS:
        raise KeyError(f"unknown image field kind {kind!r}")
    return overrides.get(kind, default)
