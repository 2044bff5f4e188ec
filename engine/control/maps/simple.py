"""The preprocessors that need no weights, as sd-webui-controlnet v1.1.455 computes them
(`scripts/preprocessor/model_free_preprocessors.py`, `scripts/preprocessor/legacy/processor.py`,
`annotator/shuffle`, `annotator/color`; GPL-3.0, re-implemented here). Each takes an HWC uint8 RGB image (RGBA
for the inpaint modules) and returns the map. No torch.
"""

import cv2
import numpy as np

from engine.control.preprocess import resize_with_pad


SHUFFLE_CELL = 256  # `ContentShuffleDetector`'s default `f`
COLOR_CELL = 64  # `apply_color`: one colour per 64 × 64 block


def identity(image: np.ndarray, resolution, a, b) -> np.ndarray:
    """none, tile_colorfix(+sharp): the input is the map (the colour fix happens at the UNet)."""
    return image


def invert(image: np.ndarray, resolution, a, b) -> np.ndarray:
    """invert (from white bg & black line): 255 − image, at the input's size."""
    return 255 - image


def canny(image: np.ndarray, resolution, low, high) -> np.ndarray:
    """OpenCV Canny on the padded image at `resolution`, white edges on black."""
    padded, remove_pad = resize_with_pad(image, resolution)
    edges = cv2.Canny(padded, int(low), int(high))
    return remove_pad(np.repeat(edges[:, :, None], 3, axis=2))


def blur_gaussian(image: np.ndarray, resolution, sigma, b) -> np.ndarray:
    padded, remove_pad = resize_with_pad(image, resolution)
    return cv2.GaussianBlur(remove_pad(padded), (0, 0), float(sigma))


def scribble_xdog(image: np.ndarray, resolution, threshold, b) -> np.ndarray:
    """Difference of Gaussians (σ 0.5 and 5), white where it exceeds the threshold."""
    padded, remove_pad = resize_with_pad(image, resolution)
    fine = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 0.5)
    coarse = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    result = np.zeros_like(padded, dtype=np.uint8)
    result[2 * (255 - dog) > threshold] = 255
    return remove_pad(result)


def threshold(image: np.ndarray, resolution, level, b) -> np.ndarray:
    padded, remove_pad = resize_with_pad(image, resolution)
    result = np.zeros_like(padded, dtype=np.uint8)
    result[np.min(padded, axis=2) > level] = 255
    return remove_pad(result)


def shuffle(image: np.ndarray, resolution, a, b, seed: int | None = None) -> np.ndarray:
    """Content shuffle: the image remapped through a smooth random flow field. sd-webui-controlnet seeds
    NumPy's global RNG with (seed + subseed) & 0xFFFFFFFF first; here a private RNG state is seeded instead."""
    from engine.control.maps.annotators import quiet_import

    make_noise_disk = quiet_import("controlnet_aux.util").make_noise_disk
    padded, remove_pad = resize_with_pad(image, int(resolution))
    picture = remove_pad(padded)
    height, width = picture.shape[:2]
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        flow_x = make_noise_disk(height, width, 1, SHUFFLE_CELL) * float(width - 1)
        flow_y = make_noise_disk(height, width, 1, SHUFFLE_CELL) * float(height - 1)
    finally:
        np.random.set_state(state)  # the worker's global NumPy RNG is left as it was
    flow = np.concatenate([flow_x, flow_y], axis=2).astype(np.float32)
    return cv2.remap(picture, flow, None, cv2.INTER_LINEAR)


def tile_resample(image: np.ndarray, resolution, rate, b) -> np.ndarray:
    """Shrink by the down-sampling rate (area); rates below 1.1 leave the image as it is."""
    if rate < 1.1:
        return image
    height, width = int(image.shape[0] / rate), int(image.shape[1] / rate)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def recolor_luminance(image: np.ndarray, resolution, gamma, b) -> np.ndarray:
    """The L channel of Lab, gamma-corrected (sd-webui-controlnet converts from BGR, as here)."""
    lightness = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)[:, :, 0].astype(np.float32) / 255.0
    return cv2.cvtColor(((lightness**gamma) * 255.0).clip(0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)


def recolor_intensity(image: np.ndarray, resolution, gamma, b) -> np.ndarray:
    """The V channel of HSV, gamma-corrected."""
    value = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[:, :, 2].astype(np.float32) / 255.0
    return cv2.cvtColor(((value**gamma) * 255.0).clip(0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)


def color_grid(image: np.ndarray, resolution, a, b) -> np.ndarray:
    """t2ia_color_grid: short side to `resolution` (area), one colour per 64-pixel cell."""
    height, width = image.shape[:2]
    if height < width:
        size = (int(round(width / height * resolution)), int(resolution))
    else:
        size = (int(resolution), int(round(height / width * resolution)))
    picture = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    height, width = picture.shape[:2]
    cells = cv2.resize(picture, (width // COLOR_CELL, height // COLOR_CELL), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(cells, (width, height), interpolation=cv2.INTER_NEAREST)


def lineart_standard(image: np.ndarray, resolution, a, b) -> np.ndarray:
    """Dark lines on a light background, from a Gaussian high-pass, normalised by its median."""
    padded, remove_pad = resize_with_pad(image, resolution)
    pixels = padded.astype(np.float32)
    blurred = cv2.GaussianBlur(pixels, (0, 0), 6.0)
    intensity = np.min(blurred - pixels, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16, np.median(strong) if strong.size else 0)
    intensity *= 127
    result = intensity.clip(0, 255).astype(np.uint8)
    return remove_pad(np.repeat(result[:, :, None], 3, axis=2))


def inpaint(image: np.ndarray, resolution, a, b) -> np.ndarray:
    """inpaint / inpaint_only: the RGBA input (alpha = mask) is the map."""
    return image
