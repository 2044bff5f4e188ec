"""`POST /sdapi/v1/extra-single-image`: upscale one image as A1111's extras tab does (`postprocessing.run_extras`
with its "Upscale" step). Face restoration (GFPGAN, CodeFormer) is not supported and is refused."""

import base64
import html
import io
import json
import logging
import math
from typing import Any, Literal

from PIL import Image, PngImagePlugin
from pydantic import BaseModel, ConfigDict, Field

from engine.errors import RequestError, UnsupportedError
from engine.imaging.decode import DEFAULT_LIMITS, decode_image
from engine.imaging.limits import ImageLimits
from engine.imaging.png import PNG_OPTIONS
from engine.upscale.pixel import PixelUpscaler
from engine.upscale.registry import Upscalers
from engine.wire.validation import parse_model


logger = logging.getLogger(__name__)

NO_UPSCALER = "None"


class ExtrasSingleImageRequest(BaseModel):
    """A1111 v1.10 `ExtrasSingleImageRequest`: field names, defaults and bounds as its API model has them."""

    model_config = ConfigDict(extra="allow")

    image: str = ""
    resize_mode: Literal[0, 1] = 0  # 0: scale by upscaling_resize; 1: to upscaling_resize_w × _h
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(default=0, ge=0, le=1)
    codeformer_visibility: float = Field(default=0, ge=0, le=1)
    codeformer_weight: float = Field(default=0, ge=0, le=1)
    upscaling_resize: float = Field(default=2, gt=0)
    upscaling_resize_w: int = Field(default=512, ge=1)
    upscaling_resize_h: int = Field(default=512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = NO_UPSCALER
    upscaler_2: str = NO_UPSCALER
    extras_upscaler_2_visibility: float = Field(default=0, ge=0, le=1)
    upscale_first: bool = False

    @classmethod
    def parse(cls, payload: Any) -> "ExtrasSingleImageRequest":
        return parse_model(cls, payload, "extra-single-image payload")


def extra_single_image(payload: Any, upscalers: Upscalers, max_pixels: int | None = None,
                       limits: ImageLimits = DEFAULT_LIMITS) -> dict[str, str]:
    """Serve `/sdapi/v1/extra-single-image`.

    Args:
        payload: the A1111 request body.
        upscalers: the engine's upscaler registry.
        max_pixels: refuse results larger than this many pixels (None: no limit).
        limits: bounds on the input image (base64 length, pixels).

    Returns:
        `{"html_info": "<p>…</p>", "image": "<base64 PNG>"}`, the PNG carrying a `postprocessing` text chunk
        (and the input's own text chunks, such as its `parameters`), as A1111 returns it.
    """
    request = ExtrasSingleImageRequest.parse(payload)
    _reject_face_restoration(request)
    image, texts = decode_image(request.image, "image", limits)
    result, info = upscale_for_extras(image, request, upscalers, max_pixels)
    infotext = ", ".join(f"{key}: {_quote(value)}" for key, value in info.items())
    return {
        "html_info": f"<p>{html.escape(infotext)}</p>",
        "image": _png_base64(result, {**texts, "postprocessing": infotext}),
    }


def upscale_for_extras(
    image: Image.Image, request: ExtrasSingleImageRequest, upscalers: Upscalers, max_pixels: int | None = None
) -> tuple[Image.Image, dict[str, Any]]:
    """A1111's `ScriptPostprocessingUpscale.process`: upscaler 1, optionally blended with upscaler 2.

    Returns:
        The image and the infotext items A1111 records ("Postprocess upscale by", "Postprocess upscaler"...).
        With `upscaler_1` "None" the image is returned untouched and nothing is recorded.
    """
    first = _pixel_upscaler(request.upscaler_1, "upscaler_1", upscalers)
    if first is None:
        return image, {}
    second = _pixel_upscaler(request.upscaler_2, "upscaler_2", upscalers)
    info: dict[str, Any] = {}
    if request.resize_mode == 1:
        scale = max(request.upscaling_resize_w / image.width, request.upscaling_resize_h / image.height)
        info["Postprocess upscale to"] = f"{request.upscaling_resize_w}x{request.upscaling_resize_h}"
    else:
        scale = request.upscaling_resize
        info["Postprocess upscale by"] = scale
    _check_result_size(image, scale, request, max_pixels)
    result = _upscale_and_crop(image, first, scale, request, info)
    info["Postprocess upscaler"] = first.name
    if second is not None and request.extras_upscaler_2_visibility > 0:
        other = _upscale_and_crop(image, second, scale, request, info)
        result = Image.blend(result, other.convert(result.mode), request.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = second.name
    return result, info


def _upscale_and_crop(
    image: Image.Image, upscaler: PixelUpscaler, scale: float, request: ExtrasSingleImageRequest, info: dict
) -> Image.Image:
    result = upscaler.upscale(image, scale)
    if request.resize_mode == 1 and request.upscaling_crop:
        # A1111 centres the result on a black canvas of the requested size (cropping what sticks out).
        width, height = request.upscaling_resize_w, request.upscaling_resize_h
        canvas = Image.new("RGB", (width, height))
        canvas.paste(result, (width // 2 - result.width // 2, height // 2 - result.height // 2))
        result = canvas
        info["Postprocess crop to"] = f"{width}x{height}"
    return result


def _pixel_upscaler(name: str, field: str, upscalers: Upscalers) -> PixelUpscaler | None:
    return None if name == NO_UPSCALER else upscalers.pixel(name, field)


def _check_result_size(
    image: Image.Image, scale: float, request: ExtrasSingleImageRequest, max_pixels: int | None
):
    if not math.isfinite(scale):
        field = "upscaling_resize_w" if request.resize_mode == 1 else "upscaling_resize"
        raise RequestError(field, f"must give a finite scale, got {scale}")
    if request.resize_mode == 1 and request.upscaling_crop:
        size, field = (request.upscaling_resize_w, request.upscaling_resize_h), "upscaling_resize_w"
    else:
        # `Upscaler.upscale` rounds the result down to a multiple of 8.
        size, field = (
            (int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8)),
            "upscaling_resize",
        )
    if min(size) < 1:
        raise RequestError(
            field, f"the {image.width}x{image.height} image would shrink to {size[0]}x{size[1]}"
        )
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        raise RequestError(
            field, f"the result would be {size[0]}x{size[1]}; at most {max_pixels} pixels allowed"
        )


def _reject_face_restoration(request: ExtrasSingleImageRequest) -> None:
    for field in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(request, field) > 0:
            raise UnsupportedError(field, "face restoration (GFPGAN/CodeFormer) is not supported; send 0")


def _quote(value: Any) -> Any:
    """A1111 `infotext_utils.quote`: JSON-quote values that contain a comma, colon or newline."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(mark in text for mark in ",:\n") else text


def _png_base64(image: Image.Image, texts: dict[str, str]) -> str:
    metadata = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        metadata.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=metadata, **PNG_OPTIONS)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
