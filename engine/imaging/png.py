"""Encode result images as A1111 returns them (PNG, JPEG or WEBP with the infotext); read the text back."""

import base64
import io
import zlib
from dataclasses import dataclass
from typing import Any

from PIL import ExifTags, Image, PngImagePlugin

from engine.errors import RequestError


# Lossless like A1111's default (zlib level 6, default strategy) but about 5× faster on a 1536×2048 result, with
# files about level 6's size (15% smaller than level 1's default strategy): after PNG's row filters a smooth
# image is mostly runs of equal bytes, which the run-length strategy finds without a match search
# (`bench/response_encoding.py`).
PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}
# A1111 `opts.samples_format` values → PIL format names.
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
# The largest side each format can store (WEBP's limit is the one A1111 users hit with hires fix).
MAX_SIDE = {"PNG": 2**31 - 1, "JPEG": 65535, "WEBP": 16383}
# EXIF UserComment as piexif's `UserComment.dump(..., encoding="unicode")` writes it, which A1111 uses:
# an 8-byte character-code prefix, then UTF-16 big-endian text.
UNICODE_PREFIX = b"UNICODE\x00"
ASCII_PREFIX = b"ASCII\x00\x00\x00"
# Keys of `Image.info` that A1111's png-info leaves out of `items` (`images.read_info_from_image`).
IGNORED_INFO_KEYS = {
    "jfif",
    "jfif_version",
    "jfif_unit",
    "jfif_density",
    "dpi",
    "exif",
    "loop",
    "background",
    "timestamp",
    "duration",
    "progressive",
    "progression",
    "icc_profile",
    "chromaticity",
    "photoshop",
}


@dataclass(frozen=True)
class ImageEncoding:
    """How result images are encoded: A1111's `samples_format`, `jpeg_quality` and `webp_lossless` options."""

    samples_format: str = "png"
    jpeg_quality: int = 80  # 1..100, used by JPEG and lossy WEBP
    webp_lossless: bool = False

    def __post_init__(self):
        if self.samples_format.lower() not in IMAGE_FORMATS:
            raise RequestError(
                "samples_format", f"must be one of {sorted(IMAGE_FORMATS)}, got {self.samples_format!r}"
            )

    @property
    def pil_format(self) -> str:
        return IMAGE_FORMATS[self.samples_format.lower()]

    @property
    def extension(self) -> str:
        return {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[self.pil_format]


PNG = ImageEncoding()


def _encoded(image: Image.Image, infotext: str | None, encoding: ImageEncoding) -> io.BytesIO:
    pil_format = encoding.pil_format
    if max(image.size) > MAX_SIDE[pil_format]:
        raise RequestError(
            "samples_format",
            f"{pil_format} stores at most {MAX_SIDE[pil_format]} px per side; the image is "
            f"{image.width}x{image.height}: use png",
        )
    buffer = io.BytesIO()
    if pil_format == "PNG":
        metadata = PngImagePlugin.PngInfo()
        if infotext:
            metadata.add_text("parameters", infotext)
        image.save(buffer, format="PNG", pnginfo=metadata, **PNG_OPTIONS)
    else:
        # JPEG has no alpha: A1111 converts RGBA (we also any other non-RGB mode) to RGB for both formats.
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        options: dict[str, Any] = {
            "quality": encoding.jpeg_quality,
            "exif": user_comment_exif(infotext or ""),
        }
        if pil_format == "WEBP":
            options["lossless"] = encoding.webp_lossless
        image.save(buffer, format=pil_format, **options)
    return buffer


def encode_image(image: Image.Image, infotext: str | None, encoding: ImageEncoding = PNG) -> bytes:
    """The image file A1111's `encode_pil_to_base64` produces: PNG with a `parameters` text chunk, or
    JPEG/WEBP with the infotext in EXIF UserComment.

    Raises:
        RequestError: the image is too large for the chosen format.
    """
    return _encoded(image, infotext, encoding).getvalue()


def encode_base64(image: Image.Image, infotext: str | None, encoding: ImageEncoding = PNG) -> str:
    """Base64 without a `data:` prefix, as A1111 sends images. The encoder's buffer is read in place (no copy
    of the file before base64)."""
    buffer = _encoded(image, infotext, encoding)
    with buffer.getbuffer() as data:
        return base64.b64encode(data).decode("ascii")


def png_bytes(image: Image.Image, infotext: str | None) -> bytes:
    return encode_image(image, infotext, PNG)


def png_base64(image: Image.Image, infotext: str | None) -> str:
    """Base64 without a `data:` prefix, as A1111's `encode_pil_to_base64`."""
    return encode_base64(image, infotext, PNG)


def user_comment_exif(text: str) -> bytes:
    """An EXIF block whose Exif IFD holds `text` as a UNICODE UserComment (what A1111 writes via piexif)."""
    exif = Image.Exif()
    exif[ExifTags.IFD.Exif] = {ExifTags.Base.UserComment: UNICODE_PREFIX + text.encode("utf-16-be")}
    return exif.tobytes()


def read_infotext(data: bytes) -> str | None:
    """The infotext of an encoded image: a PNG's `parameters` text, or a JPEG/WEBP EXIF UserComment."""
    with Image.open(io.BytesIO(data)) as image:
        return read_image_info(image)[0]


def read_image_info(image: Image.Image) -> tuple[str | None, dict[str, Any]]:
    """A1111 `images.read_info_from_image`: (infotext, the image's other metadata items).

    The infotext is the `parameters` text chunk, or the EXIF UserComment when there is one (reported in the
    items as "exif comment"). Items keep only JSON-friendly values.
    """
    items = {key: _plain(value) for key, value in image.info.items() if isinstance(key, str)}
    infotext = items.pop("parameters", None)
    comment = _user_comment(image)
    if comment is not None:
        items["exif comment"] = comment
        infotext = comment
    items = {key: value for key, value in items.items() if key not in IGNORED_INFO_KEYS and value is not None}
    return (infotext if isinstance(infotext, str) else None), items


def _user_comment(image: Image.Image) -> str | None:
    if "exif" not in image.info:
        return None
    raw = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    if not isinstance(raw, bytes):
        return raw if isinstance(raw, str) else None
    prefix, body = raw[:8], raw[8:]
    if prefix == UNICODE_PREFIX:
        return body.decode("utf-16-be", errors="ignore")
    if prefix == ASCII_PREFIX:
        return body.decode("ascii", errors="ignore")
    # A1111 falls back to reading unknown prefixes as UTF-8.
    return raw.decode("utf-8", errors="ignore")


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, tuple) and all(isinstance(item, int | float) for item in value):
        return list(value)
    return None
