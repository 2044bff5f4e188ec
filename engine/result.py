"""`GenerationResult`: the images a generation made and what A1111 returns with them, as its JSON body."""

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from engine.imaging.png import PNG, ImageEncoding, encode_base64
from engine.wire.img2img import Img2ImgRequest


@dataclass
class GenerationResult:
    """Images plus what A1111 returns with them; `response()` is the A1111 JSON body."""

    images: list[Image.Image]
    infotexts: list[str]
    info: str  # a JSON string, as A1111 sends it
    parameters: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    unet_calls: int = 0
    restorer_calls: int = 0  # face restoration network calls (one per restored face)
    # ControlNet's detected maps: A1111 + ControlNet returns them after the results.
    detected_maps: list[Image.Image] = field(default_factory=list)
    # Stopped by an interrupt or the job timeout (a script stops there too, as A1111's `state.interrupted`).
    interrupted: bool = False

    def response(self, send_images: bool = True, encoding: ImageEncoding = PNG) -> dict[str, Any]:
        """A1111's body; images encoded as `encode_pil_to_base64` does, in `encoding`'s format, the infotext
        kept in each result, ControlNet's maps after the results (as A1111 + ControlNet returns them)."""
        images = []
        if send_images:
            pairs = zip(self.images, self.infotexts, strict=True)
            images = [encode_base64(image, text, encoding) for image, text in pairs]
            images += [encode_base64(image, None, encoding) for image in self.detected_maps]
        body: dict[str, Any] = {
            "images": images,
            "parameters": self.parameters,
            "info": self.info,
        }
        if self.warnings:
            body["warnings"] = self.warnings
        return body


def request_parameters(request) -> dict[str, Any]:
    """A1111's response `parameters`: the request with defaults filled; img2img's (large) init images and mask
    only when `include_init_images` asks for them."""
    parameters = request.parameters()
    if isinstance(request, Img2ImgRequest) and not request.include_init_images:
        parameters.update(init_images=None, mask=None)
    return parameters
