"""The one decoder of the images clients send (base64, optionally a `data:` URL), within `ImageLimits`.

Every payload image field goes through `open_image` / `decode_image`: the base64 length is bounded before
it is decoded, the pixel count is read from the file's header before any pixel is (Pillow's `open` is lazy),
and whatever Pillow raises on a bomb, a truncated file or data that is no image becomes one `RequestError`
naming the field and the limit.
"""

import base64
import binascii
import io
import sys
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import RequestError, UnsupportedError
from engine.imaging.limits import ImageLimits


# Raster formats a client image may be in. Pillow would also try formats that run external programs (EPS
# through Ghostscript) or that few clients send; those are refused as "not an image".
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG covers MPO (phone cameras)
DEFAULT_LIMITS = ImageLimits()
# 16-bit greyscale modes: Pillow's convert("RGB") clips them to white instead of scaling them to 8 bits.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def check_image_count(images: Sequence, field: str, limits: ImageLimits = DEFAULT_LIMITS) -> None:
    """Refuse a list field holding more images than its limit, before any of them is decoded."""
    if len(images) > limits.images:
        raise RequestError(field, f"holds {len(images)} images; at most {limits.images} accepted")


def open_image(text: str, field: str, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """A client's base64 image, opened and loaded as stored (mode and metadata untouched).

    Raises:
        RequestError: empty, too long, not base64, not an image, more pixels than `limits.pixels`, truncated;
            the message names `field` and, for a limit, its value.
        UnsupportedError: an image URL (never fetched).
    """
    if not isinstance(text, str) or not text.strip():
        raise RequestError(field, "is required: a base64-encoded image")
    text = text.strip()
    if text.startswith(("http://", "https://")):
        raise UnsupportedError(field, "image URLs are not fetched; send the image itself, base64-encoded")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > limits.base64_chars:
        raise RequestError(field, f"is {len(text)} base64 characters; at most {limits.base64_chars} accepted")
    try:
        data = base64.b64decode(text)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(field, f"is not valid base64 ({exc})") from None
    try:
        with warnings.catch_warnings():
            # Pillow warns between its two bomb thresholds; the pixel limit below decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _pil_open()(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise RequestError(field, f"has more than {limits.pixels} pixels (the limit)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise RequestError(field, f"is not an image in a supported format ({', '.join(FORMATS)})") from None
    width, height = image.size
    if width * height > limits.pixels:
        image.close()
        raise RequestError(field, f"is {width}x{height} = {width * height} pixels; at most {limits.pixels} accepted")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        image.close()
        raise RequestError(field, f"is a damaged or truncated image ({exc})") from None
    return image


def decode_image(
    text: str, field: str = "image", limits: ImageLimits = DEFAULT_LIMITS
) -> tuple[Image.Image, dict[str, str]]:
    """A base64 image as A1111 reads it: EXIF rotation applied, palette transparency kept as RGBA, other
    modes converted to RGB (16-bit greyscale scaled to 8 bits, CMYK through Pillow's conversion). Also returns
    its text chunks. Bounded and checked as `open_image`."""
    image = open_image(text, field, limits)
    texts = {
        key: value for key, value in image.info.items() if isinstance(key, str) and isinstance(value, str)
    }
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGB", "P") and isinstance(image.info.get("transparency"), bytes):
        image = image.convert("RGBA")
    if image.mode in SIXTEEN_BIT_MODES:
        image = _eight_bit_grey(image)
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    return image, texts


def _eight_bit_grey(image: Image.Image) -> Image.Image:
    """16-bit greyscale (PNG `I;16`) as 8-bit "L": the high byte, as Pillow keeps it for 16-bit RGB PNGs."""
    values = np.asarray(image.convert("I"), dtype=np.int64)
    return Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), mode="L")


def _pil_open():
    """PIL's own `Image.open`. Importing ultralytics replaces it with a wrapper that, on data PIL cannot
    identify, tries to install pi-heif from the network; a bad client image must stay a clear error."""
    patches = sys.modules.get("ultralytics.utils.patches")
    return getattr(patches, "_image_open", Image.open)
