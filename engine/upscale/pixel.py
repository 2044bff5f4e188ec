"""Pixel-space upscalers: A1111's enlarge-until-big-enough loop (`Upscaler.upscale`), its hires resize
(`images.resize_image`, mode 0) and the PIL upscalers "None", "Lanczos" and "Nearest". No torch."""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from PIL import Image


LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST
# A1111 runs an upscaler at most three times (a 4x model: up to 64x) before resizing to the target.
MAX_PASSES = 3


class PixelUpscaler(ABC):
    """An upscaler working on decoded images. Subclasses implement one enlarging pass (`enlarge`)."""

    kind: ClassVar[str] = "pixel"
    name: str

    @abstractmethod
    def enlarge(self, image: Image.Image, scale: float) -> Image.Image:
        """One pass (A1111 `do_upscale`): a model's own factor, or `scale` for a resampler."""

    def upscale(self, image: Image.Image, scale: float) -> Image.Image:
        """Enlarge by `scale` as A1111's `Upscaler.upscale` does (the extras tab).

        Runs `enlarge` until the image covers the destination, at most MAX_PASSES times, stopping early when
        a pass changes nothing; the first pass always runs, so at scale 1 a model still processes the image
        before it is resized back (ReActor's "upscaler visibility" relies on it); then LANCZOS to the
        destination. The destination is rounded *down to a
        multiple of 8*: `int(width * scale) // 8 * 8` (A1111's rule, kept for identical output sizes).

        Args:
            image: the image to enlarge.
            scale: factor > 0 applied to both sides.
        """
        target = (int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8))
        for _ in range(MAX_PASSES):
            before = image.size
            image = self.enlarge(image, scale)
            if image.size == before or (image.width >= target[0] and image.height >= target[1]):
                break
        if image.size != target:
            image = image.resize(target, resample=LANCZOS)
        return image

    def resize(self, image: Image.Image, width: int, height: int) -> Image.Image:
        """Resize to exactly `width` × `height` as hires fix does (A1111 `images.resize_image(0, ...)`).

        Enlarges with this upscaler only when a side grows (by the larger of the two ratios), then LANCZOS
        to the exact size. Single-channel images skip the upscaler, as in A1111.
        """
        scale = max(width / image.width, height / image.height)
        if scale > 1.0 and image.mode != "L":
            image = self.upscale(image, scale)
        if image.size != (width, height):
            image = image.resize((width, height), resample=LANCZOS)
        return image


@dataclass(frozen=True)
class ResamplingUpscaler(PixelUpscaler):
    """A1111's built-in "Lanczos" and "Nearest": one PIL resize per pass, by the requested scale."""

    name: str
    resample: Image.Resampling

    def enlarge(self, image: Image.Image, scale: float) -> Image.Image:
        return image.resize((int(image.width * scale), int(image.height * scale)), resample=self.resample)


@dataclass(frozen=True)
class NoUpscaler(PixelUpscaler):
    """A1111's "None": no enlarging pass. Hires fix then simply LANCZOS-resizes; extras skip upscaling."""

    name: str = "None"

    def enlarge(self, image: Image.Image, scale: float) -> Image.Image:
        return image

    def resize(self, image: Image.Image, width: int, height: int) -> Image.Image:
        # `resize_image` short-circuits on "None": one LANCZOS resize, without the multiple-of-8 step.
        return image.resize((width, height), resample=LANCZOS)


# A1111 lists these first, in this order, before every model upscaler (`modelloader.load_upscalers`).
BUILTIN_UPSCALERS: dict[str, PixelUpscaler] = {
    upscaler.name: upscaler
    for upscaler in (NoUpscaler(), ResamplingUpscaler("Lanczos", LANCZOS), ResamplingUpscaler("Nearest", NEAREST))
}
