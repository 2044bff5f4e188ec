"""A1111 v1.10 img2img inpaint geometry: mask blur, "only masked" crop, resize modes, latent mask, paste-back."""

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageFilter, ImageOps


Region = tuple[int, int, int, int]  # x1, y1, x2, y2 (x2, y2 exclusive)

# A1111 `images.resize_image` modes (img2img "Resize mode"); "Just resize (latent upscale)" is not a pixel mode.
JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL = 0, 1, 2


def create_binary_mask(mask: Image.Image, round_alpha: bool = True) -> Image.Image:
    """A1111 `create_binary_mask`: an RGBA mask with any non-opaque pixel is its alpha channel (thresholded
    at > 128 when `round_alpha`); anything else is converted to "L"."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        alpha = mask.getchannel("A")
        return alpha.point(lambda value: 255 if value > 128 else 0) if round_alpha else alpha
    return mask.convert("L")


def blur_kernel_size(sigma: int) -> int:
    """A1111's Gaussian kernel width for a mask blur of `sigma` pixels: 2·int(2.5σ + 0.5) + 1 (σ 4 → 21)."""
    return 2 * int(2.5 * sigma + 0.5) + 1


def blur_mask(mask: Image.Image, blur_x: int, blur_y: int | None = None) -> Image.Image:
    """A1111's separable mask blur: cv2.GaussianBlur along x (kernel k×1, σ = blur_x), then along y.

    `blur_y` defaults to `blur_x` (the API's single `mask_blur`); 0 skips that axis.
    """
    blur_y = blur_x if blur_y is None else blur_y
    pixels = np.asarray(mask.convert("L"))
    if blur_x > 0:
        pixels = cv2.GaussianBlur(pixels, (blur_kernel_size(blur_x), 1), blur_x)
    if blur_y > 0:
        pixels = cv2.GaussianBlur(pixels, (1, blur_kernel_size(blur_y)), blur_y)
    return Image.fromarray(pixels)


def get_crop_region(mask: Image.Image, padding: int = 0) -> Region | None:
    """A1111 `masking.get_crop_region_v2`: the box around the mask's nonzero pixels, grown by `padding` on each
    side and clamped to the image; None for an all-black mask."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    width, height = mask.size
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, width), min(y2 + padding, height)


def expand_crop_region(region: Region, processing_width: int, processing_height: int,
                       image_width: int, image_height: int) -> Region:
    """A1111 `masking.expand_crop_region`: grow the short side so the region has the processing aspect ratio.

    The growth is split evenly (the extra pixel goes to the bottom/right); a region pushed past one edge of
    the image is shifted back inside, and one larger than the image is clamped to it.
    """
    x1, y1, x2, y2 = region
    processing_ratio = processing_width / processing_height
    if (x2 - x1) / (y2 - y1) > processing_ratio:
        y1, y2 = _expand_span(y1, y2, int((x2 - x1) / processing_ratio - (y2 - y1)), image_height)
    else:
        x1, x2 = _expand_span(x1, x2, int((y2 - y1) * processing_ratio - (x2 - x1)), image_width)
    return x1, y1, x2, y2


def _expand_span(start: int, end: int, grow: int, limit: int) -> tuple[int, int]:
    start -= grow // 2
    end += grow - grow // 2
    if end >= limit:
        start -= end - limit
        end = limit
    if start < 0:
        end -= start
        start = 0
    return start, min(end, limit)


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111 `images.resize_image` with no img2img upscaler (LANCZOS).

    0 stretches to width×height; 1 scales to cover and crops the centre; 2 scales to fit, centres, and fills
    the bars by stretching the image's outermost row/column. Modes 1 and 2 return "RGB" as A1111 does, except
    that an "L" image stays "L" (the same values A1111's RGB result holds in every channel).
    """
    if mode == JUST_RESIZE:
        return image.resize((width, height), resample=Image.Resampling.LANCZOS)
    if mode not in (CROP_AND_RESIZE, RESIZE_AND_FILL):
        raise ValueError(f"unknown resize mode {mode}; valid: 0 (just resize), 1 (crop and resize), 2 (resize and fill)")
    ratio, source_ratio = width / height, image.width / image.height
    # Mode 1 scales so both sides cover the target, mode 2 so both fit inside it.
    match_width = ratio > source_ratio if mode == CROP_AND_RESIZE else ratio < source_ratio
    scaled_w = width if match_width else image.width * height // image.height
    scaled_h = image.height * width // image.width if match_width else height
    scaled = image.resize((scaled_w, scaled_h), resample=Image.Resampling.LANCZOS)
    result = Image.new("L" if image.mode == "L" else "RGB", (width, height))
    result.paste(scaled, box=(width // 2 - scaled_w // 2, height // 2 - scaled_h // 2))
    if mode == RESIZE_AND_FILL:
        _fill_bars(result, scaled, ratio, source_ratio)
    return result


def _fill_bars(result: Image.Image, scaled: Image.Image, ratio: float, source_ratio: float) -> None:
    """Resize-and-fill: stretch the scaled image's first/last row (or column) over the empty bars."""
    width, height = result.size
    if ratio < source_ratio:
        bar = height // 2 - scaled.height // 2
        if bar > 0:
            result.paste(scaled.resize((width, bar), box=(0, 0, width, 0)), box=(0, 0))
            result.paste(scaled.resize((width, bar), box=(0, scaled.height, width, scaled.height)),
                         box=(0, bar + scaled.height))
    elif ratio > source_ratio:
        bar = width // 2 - scaled.width // 2
        if bar > 0:
            result.paste(scaled.resize((bar, height), box=(0, 0, 0, height)), box=(0, 0))
            result.paste(scaled.resize((bar, height), box=(scaled.width, 0, scaled.width, height)),
                         box=(bar + scaled.width, 0))


def make_overlay(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """The original as RGBA with alpha = 255 − mask: composited over the result, it restores every pixel
    the (blurred) mask does not fully cover. Built through premultiplied "RGBa" as A1111 builds it."""
    premultiplied = Image.new("RGBa", image.size)
    premultiplied.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_for_overlay.convert("L")))
    return premultiplied.convert("RGBA")


def uncrop(image: Image.Image, canvas_size: tuple[int, int], paste_to: Region) -> Image.Image:
    """A1111 `uncrop`: crop-and-resize `image` to the (x, y, w, h) box and paste it on a transparent canvas."""
    x, y, width, height = paste_to
    canvas = Image.new("RGBA", canvas_size)
    canvas.paste(resize_image(CROP_AND_RESIZE, image, width, height), (x, y))
    return canvas


def apply_overlay(image: Image.Image, paste_to: Region | None, overlay: Image.Image) -> Image.Image:
    """A1111 `apply_overlay`: uncrop the generated image (only-masked) and composite the overlay on top."""
    if paste_to is not None:
        image = uncrop(image, overlay.size, paste_to)
    composed = image.convert("RGBA")
    composed.alpha_composite(overlay)
    return composed.convert("RGB")


@dataclass(frozen=True)
class InpaintRegion:
    """What A1111's img2img `init` derives from one image and one mask, for a width×height pass."""

    init_image: Image.Image  # "RGB", width×height: what the VAE encodes
    mask: Image.Image  # "L", width×height: blurred (cropped) mask; the latent mask derives from it
    overlay: Image.Image  # "RGBA": the original at output size with alpha = 255 − overlay mask
    paste_to: Region | None  # (x, y, w, h) of the crop in the original; None for the whole picture
    crop: Region | None  # (x1, y1, x2, y2) of the crop; None for the whole picture

    def paste_back(self, generated: Image.Image) -> Image.Image:
        """The decoded width×height result composited as A1111 returns it (original size for only-masked)."""
        return apply_overlay(generated, self.paste_to, self.overlay)


def prepare_inpaint(image: Image.Image, mask: Image.Image, width: int, height: int, *,
                    mask_blur: int | tuple[int, int] = 4, only_masked: bool = True, padding: int = 32,
                    resize_mode: int = JUST_RESIZE, invert: bool = False, round_alpha: bool = True) -> InpaintRegion:
    """A1111 `StableDiffusionProcessingImg2Img.init` for one init image and mask ("original" fill).

    Only masked: the crop is the blurred mask's bounding box plus `padding`, grown to the width:height aspect;
    image and mask crops are resized with mode 2 (resize and fill). Whole picture: both are resized with
    `resize_mode` and the overlay uses the mask doubled (a harder edge), at width×height.
    Raises ValueError for an all-black mask (A1111 would silently inpaint nothing; ADetailer never sends one)
    and for a mask whose size differs from the image's.
    """
    if mask.size != image.size:
        raise ValueError(f"the mask is {mask.size[0]}×{mask.size[1]}, the image {image.size[0]}×{image.size[1]}")
    image = image.convert("RGB")
    binary = create_binary_mask(mask, round_alpha)
    if invert:
        binary = ImageOps.invert(binary)
    blur_x, blur_y = mask_blur if isinstance(mask_blur, tuple) else (mask_blur, mask_blur)
    blurred = blur_mask(binary, blur_x, blur_y)
    if not only_masked:
        resized_mask = resize_image(resize_mode, blurred, width, height)
        overlay_mask = Image.fromarray(np.clip(np.asarray(resized_mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8))
        resized = resize_image(resize_mode, image, width, height)
        return InpaintRegion(resized, resized_mask, make_overlay(resized, overlay_mask), None, None)
    region = get_crop_region(blurred, padding)
    if region is None:
        raise ValueError("the inpaint mask is empty")
    x1, y1, x2, y2 = expand_crop_region(region, width, height, *blurred.size)
    crop = (x1, y1, x2, y2)
    return InpaintRegion(
        init_image=resize_image(RESIZE_AND_FILL, image.crop(crop), width, height),
        mask=resize_image(RESIZE_AND_FILL, blurred.crop(crop), width, height),
        overlay=make_overlay(image, blurred),
        paste_to=(x1, y1, x2 - x1, y2 - y1),
        crop=crop,
    )


def latent_mask(mask: Image.Image, latent_width: int, latent_height: int, round_mask: bool = True) -> np.ndarray:
    """A1111's `nmask` for one image: the processed mask resized (PIL bicubic) to latent size, in [0, 1],
    rounded to 0/1 by default (`mask_round`). 1 = repaint, 0 = keep; shape (latent_height, latent_width)."""
    small = mask.convert("RGB").resize((latent_width, latent_height), resample=Image.Resampling.BICUBIC)
    values = np.asarray(small, dtype=np.float32)[..., 0] / 255
    return np.around(values) if round_mask else values


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111 `masking.fill` (inpainting_fill "fill"): paint the masked area with ever finer blurs of the
    unmasked surroundings, so the model starts from the neighbourhood's colours instead of the old content."""
    result = Image.new("RGBA", image.size)
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")
