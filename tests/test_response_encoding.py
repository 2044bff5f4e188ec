"""The work after the last step: VAE output → uint8 image → PNG with A1111's infotext → base64."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from engine.imaging.png import encode_base64, encode_image, read_infotext
from engine.pipeline import decoded_to_image


INFOTEXT = "a fox, snow\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 96x64"


def textured_image(mode: str, width: int = 96, height: int = 64) -> Image.Image:
    """Gradients, flat areas and noise: every PNG row filter and zlib match kind gets exercised."""
    rng = np.random.default_rng(7)
    channels = len(mode)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 3 + y * (c + 1)) % 256 for c in range(channels)], axis=-1).astype(np.int16)
    pixels[: height // 3] = 40  # a flat band
    pixels[height // 2 :] += rng.integers(-20, 21, size=pixels[height // 2 :].shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_png_round_trip_is_lossless_and_keeps_the_infotext(mode):
    image = textured_image(mode)
    encoded = encode_base64(image, INFOTEXT)
    data = base64.b64decode(encoded, validate=True)
    assert data == encode_image(image, INFOTEXT)  # base64 of exactly the PNG file
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == "PNG" and decoded.mode == mode
        assert decoded.tobytes() == image.tobytes()
        assert decoded.info["parameters"] == INFOTEXT  # A1111's `parameters` text chunk
    assert read_infotext(data) == INFOTEXT


def test_png_is_no_larger_than_pils_default_on_a_smooth_image():
    # A generated image is smooth at pixel scale (an upscaled small image stands in for one).
    image = textured_image("RGB", 48, 32).resize((384, 256), Image.Resampling.LANCZOS)
    default = io.BytesIO()
    image.save(default, format="PNG")
    assert len(encode_image(image, None)) <= len(default.getvalue()) * 1.05


def test_decoded_pixels_are_a1111s_truncated_uint8():
    decoded = torch.linspace(-1.2, 1.2, 3 * 40 * 50).reshape(3, 40, 50)
    decoded[0, 0, :4] = torch.tensor([-1.0, 1.0, 0.0, 2 * (128 / 255) - 1])
    expected = (255.0 * torch.clamp((decoded + 1.0) / 2.0, 0.0, 1.0).permute(1, 2, 0).numpy()).astype(np.uint8)
    assert np.array_equal(np.asarray(decoded_to_image(decoded)), expected)
    assert np.array_equal(np.asarray(decoded_to_image(decoded.half())),
                          (255.0 * torch.clamp((decoded.half().float() + 1.0) / 2.0, 0.0, 1.0)
                           .permute(1, 2, 0).numpy()).astype(np.uint8))
