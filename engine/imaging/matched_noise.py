"""Outpainting mk2's fill: noise shaped in frequency space like the visible image and histogram-matched to it.

The algorithm is parlance-zz/g-diffuser-bot's `get_matched_noise` as AUTOMATIC1111/stable-diffusion-webui
v1.10 `scripts/outpainting_mk_2.py` carries it (written anew here): the unmasked image's spectrum magnitude
and phase shape a windowed noise, whose histogram is then matched (scikit-image) to the unmasked pixels; the
noise seed is fixed (0), so the fill depends on the image only. Arrays are float64 in [0, 1], shape
(rows, cols, 3). No torch.
"""

import numpy as np
from skimage.exposure import match_histograms


def _fft2(data: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D FFT per channel, shifted before and after (the origin in the middle)."""
    out = np.zeros(data.shape, dtype=np.complex128)
    for channel in range(data.shape[2]):
        out[:, :, channel] = np.fft.ifftshift(np.fft.fft2(np.fft.fftshift(data[:, :, channel]), norm="ortho"))
    return out


def _ifft2(data: np.ndarray) -> np.ndarray:
    out = np.zeros(data.shape, dtype=np.complex128)
    for channel in range(data.shape[2]):
        out[:, :, channel] = np.fft.ifftshift(np.fft.ifft2(np.fft.fftshift(data[:, :, channel]), norm="ortho"))
    return out


def _falloff_window(rows: int, cols: int, std: float = 3.14) -> np.ndarray:
    """The source's "mode 1" window: (1 / ((x² + 1)(y² + 1)))^(std / 3.14) over [-1, 1] scaled to the aspect."""
    scale_x = rows / min(rows, cols)
    scale_y = cols / min(rows, cols)
    x = (np.arange(rows) / rows * 2.0 - 1.0) * scale_x
    y = (np.arange(cols) / cols * 2.0 - 1.0) * scale_y
    return (1 / ((x[:, None] ** 2 + 1.0) * (y[None, :] ** 2 + 1.0))) ** (std / 3.14)


def matched_noise(image: np.ndarray, mask: np.ndarray, noise_q: float = 1.0, color_variation: float = 0.05):
    """Fill the masked area of `image` with noise matched to the rest.

    Args:
        image: (rows, cols, 3) float in [0, 1].
        mask: (rows, cols, 3) float in [0, 1]; 1 = fill.
        noise_q: fall-off exponent of the source spectrum (lower = more detail).
        color_variation: how much of the starting noise keeps its colour (0 = grey).

    Returns:
        The image with its masked area replaced, clipped to [0, 1].
    """
    rows, cols, channels = image.shape
    grey_mask = np.sum(mask, axis=2) / 3.0
    fill_area, reference_area = grey_mask > 1e-6, grey_mask < 1e-3

    windowed = image * (1.0 - grey_mask[:, :, None])
    windowed = windowed / max(np.max(windowed), 1e-12)
    # Filling the masked area with the average colour gives the FFT better statistics than black.
    windowed = windowed + np.average(image) * mask
    source = _fft2(windowed)
    magnitude = np.absolute(source)
    # The source divides by zero where a frequency is absent (a flat image) and fills with NaN; zero phase
    # there keeps the fill defined.
    phase = np.divide(source, magnitude, out=np.zeros_like(source), where=magnitude > 0)

    rng = np.random.default_rng(0)
    noise = rng.random((rows, cols, channels))
    grey = np.sum(noise, axis=2) / 3.0
    noise = noise * color_variation + (1.0 - color_variation) * grey[:, :, None]
    noise_spectrum = _fft2(noise) * _falloff_window(rows, cols)[:, :, None]
    noise = np.real(_ifft2(noise_spectrum))
    shaped = np.absolute(_fft2(noise)) ** 2 * (magnitude**noise_q) * phase

    result = np.real(_ifft2(shaped))
    result -= np.min(result)
    if np.max(result) > 0:
        result /= np.max(result)
    result[fill_area, :] = match_histograms(result[fill_area, :], image[reference_area, :], channel_axis=1)
    result = image * (1.0 - mask) + result * mask
    return np.clip(result, 0.0, 1.0)
