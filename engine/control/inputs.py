"""A ControlNet unit's input images as clients send them, and the img2img mask and "only masked" crop that
sd-webui-controlnet applies to them. No torch."""

from collections.abc import Mapping
from typing import Any

from PIL import Image, ImageOps

from engine.errors import RequestError
from engine.imaging.decode import DEFAULT_LIMITS, check_image_count, decode_image
from engine.imaging.inpaint import (
    blur_mask,
    create_binary_mask,
    expand_crop_region,
    get_crop_region,
    resize_image,
)
from engine.imaging.limits import ImageLimits


Decoded = tuple[Image.Image, Image.Image | None]  # (RGB image, "L" mask or None)


def decode_unit_images(image: Any, mask: Any, field: str, limits: ImageLimits = DEFAULT_LIMITS) -> tuple[Decoded, ...]:
    """sd-webui-controlnet `get_input_images_rgba`: a base64 string (with `mask` beside it), {"image", "mask"},
    [image, mask], or a list of {"image", "mask"} (several inputs for one IP-Adapter). The list's length is
    bounded by `limits.images` before any image is decoded."""
    if image is None or image == "":
        entries = []
    elif isinstance(image, str):
        entries = [{"image": image, "mask": mask}]
    elif isinstance(image, Mapping):
        entries = [image]
    elif isinstance(image, list) and image and all(isinstance(item, Mapping) for item in image):
        entries = image
    elif isinstance(image, list) and len(image) == 2 and isinstance(image[0], str):
        entries = [{"image": image[0], "mask": image[1]}]
    else:
        raise RequestError(field, 'must be a base64 image, {"image": ..., "mask": ...}, or a list of those')
    check_image_count(entries, field, limits)
    decoded = []
    for number, entry in enumerate(entries):
        where = field if len(entries) == 1 else f"{field}[{number}]"
        text = entry.get("image")
        if not isinstance(text, str):
            raise RequestError(where, "must be a base64-encoded image")
        picture = to_rgb(decode_image(text, where, limits)[0])
        given = entry.get("mask")
        control_mask = None
        if given not in (None, ""):
            if not isinstance(given, str):
                raise RequestError(f"{where}.mask", "must be a base64-encoded image")
            # `combine_image_and_mask`: the mask's first channel (masks are grey anyway).
            control_mask = decode_image(given, f"{where}.mask", limits)[0].convert("RGB").getchannel("R")
            if control_mask.size != picture.size:
                raise RequestError(f"{where}.mask", f"is {control_mask.size[0]}x{control_mask.size[1]}, the "
                                                    f"image {picture.size[0]}x{picture.size[1]}")
        decoded.append((picture, control_mask))
    return tuple(decoded)


def to_rgb(image: Image.Image) -> Image.Image:
    """ControlNet's `HWC3`: RGBA is composited onto white, other modes converted to RGB."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image).convert("RGB")


def processed_mask(mask: Image.Image, round_alpha: bool, invert: bool, blur: tuple[int, int]) -> Image.Image:
    """sd-webui-controlnet `prepare_mask` on A1111's img2img mask: grey ("L"), inverted when
    `inpainting_mask_invert`, blurred along x then y with `mask_blur_x/y`."""
    binary = create_binary_mask(mask, round_alpha)
    return blur_mask(ImageOps.invert(binary) if invert else binary, *blur)


def crop_to_mask_region(picture: Image.Image, mode: int, mask: Image.Image, padding: int, width: int,
                        height: int) -> Image.Image:
    """sd-webui-controlnet `try_crop_image_with_a1111_mask`: the input resized to the mask's size (A1111 resize
    `mode` 0–2), cut to the "only masked" region (padded, grown to the pass's aspect ratio) and fitted to
    width × height with "Resize and fill", as A1111 cuts the init image."""
    region = get_crop_region(mask, padding)
    if region is None:
        return picture
    region = expand_crop_region(region, width, height, *mask.size)
    fitted = resize_image(mode, picture, *mask.size).crop(region)
    return resize_image(2, fitted, width, height)
