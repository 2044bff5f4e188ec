"""Images as clients send them: base64, optionally as a `data:` URL."""

import base64
import binascii
import io
import sys

from PIL import Image, ImageOps

from engine.errors import RequestError, UnsupportedError


def decode_image(text: str, field: str = "image") -> tuple[Image.Image, dict[str, str]]:
    """A base64 image (optionally a `data:image/...;base64,` URL) as A1111 reads it: EXIF rotation applied,
    palette transparency kept as RGBA, other modes converted to RGB. Also returns its text chunks."""
    if not text:
        raise RequestError(field, "is required: a base64-encoded image")
    if text.startswith(("http://", "https://")):
        raise UnsupportedError(field, "image URLs are not fetched; send the image itself, base64-encoded")
    if text.startswith("data:image/"):
        text = text.partition(",")[2]
    try:
        image = _pil_open()(io.BytesIO(base64.b64decode(text)))
        image.load()
    except (binascii.Error, ValueError, OSError) as exc:
        raise RequestError(field, f"is not a base64-encoded image ({exc})") from None
    texts = {
        key: value for key, value in image.info.items() if isinstance(key, str) and isinstance(value, str)
    }
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGB", "P") and isinstance(image.info.get("transparency"), bytes):
        image = image.convert("RGBA")
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    return image, texts


def _pil_open():
    """PIL's own `Image.open`. Importing ultralytics replaces it with a wrapper that, on data PIL cannot
    identify, tries to install pi-heif from the network; a bad client image must stay a clear error."""
    patches = sys.modules.get("ultralytics.utils.patches")
    return getattr(patches, "_image_open", Image.open)
