"""Control-map geometry: the preprocessors' resize with pad, fitting a map to a pass's size with the unit's
resize mode, and pixel perfect, as sd-webui-controlnet's `resize_image_with_pad`, `detectmap_proc` and
`pixel_perfect_resolution` do; InstantID's face finder and keypoint map. No torch."""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from engine.control.faces import DetectedFace, FaceAnalyser
from engine.control.keypoints import draw_keypoints
from engine.control.units import CROP_AND_RESIZE, JUST_RESIZE, RESIZE_AND_FILL
from engine.errors import choices


PAD_MULTIPLE = 64  # preprocessors see the image edge-padded to a multiple of 64, then the pad is cut off
# `high_quality_resize`: maps with a few flat colours (keypoints, segmentation) are resized nearest-neighbour.
FEW_COLOURS = (2, 200)
BINARY_DARK, BINARY_BRIGHT = 16, 240


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """HWC uint8 RGB, as ControlNet's `HWC3` makes every input."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def resize_with_pad(image: np.ndarray, resolution: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Scale so the short side is `resolution` (cubic up, area down), edge-pad right and bottom to a multiple
    of 64; also return the function that cuts a result at that size back to the unpadded region."""
    height, width = image.shape[:2]
    scale = float(resolution) / float(min(height, width))
    target_h, target_w = int(np.round(height * scale)), int(np.round(width * scale))
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    resized = cv2.resize(image, (target_w, target_h), interpolation=interpolation)
    pad_h, pad_w = -target_h % PAD_MULTIPLE, -target_w % PAD_MULTIPLE
    padded = np.pad(resized, [[0, pad_h], [0, pad_w], [0, 0]], mode="edge")

    def remove_pad(result: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(result[:target_h, :target_w])

    return np.ascontiguousarray(padded), remove_pad


@dataclass(frozen=True)
class FaceAnalysis:
    """The chosen face as the preprocessor saw the image: resized (short side = resolution) and padded."""

    face: DetectedFace
    padded_size: tuple[int, int]  # (width, height)
    remove_pad: Callable[[np.ndarray], np.ndarray]


class FaceFinder:
    """sd-webui-controlnet `run_model_instant_id`: the largest face on the image resized with pad to the
    processor resolution. Remembers each (image, resolution): both InstantID units usually send the same image.
    The analyser is created on first use, so requests without faces never load insightface."""

    def __init__(self, analyser: Callable[[], FaceAnalyser]):
        self._analyser = analyser
        self._found: dict[tuple, FaceAnalysis] = {}

    def __call__(self, image: np.ndarray, resolution: int, field: str) -> FaceAnalysis:
        key = (hashlib.sha1(image.tobytes()).hexdigest(), image.shape, resolution)
        if key not in self._found:
            padded, remove_pad = resize_with_pad(image, resolution)
            face = self._analyser().largest_face(padded, field)
            self._found[key] = FaceAnalysis(face, (padded.shape[1], padded.shape[0]), remove_pad)
        return self._found[key]


def keypoint_map(image: np.ndarray, resolution: int, faces: FaceFinder, field: str) -> np.ndarray:
    """InstantID's keypoints drawn on the padded image's canvas, then the pad cut off (the map is at processor
    scale)."""
    found = faces(image, resolution, field)
    return found.remove_pad(draw_keypoints(*found.padded_size, found.face.keypoints))


def pixel_perfect_resolution(image_size: tuple[int, int], target_size: tuple[int, int], resize_mode: str) -> int:
    """sd-webui-controlnet `pixel_perfect_resolution`: the processor resolution at which the map needs no
    rescaling. Sizes are (width, height)."""
    (raw_w, raw_h), (target_w, target_h) = image_size, target_size
    scale_h, scale_w = target_h / raw_h, target_w / raw_w
    pick = min if resize_mode == RESIZE_AND_FILL else max
    return int(np.round(pick(scale_h, scale_w) * min(raw_h, raw_w)))


def fit_map(detected: np.ndarray, resize_mode: str, width: int, height: int) -> np.ndarray:
    """The map at exactly width × height (`detectmap_proc`): stretched (Just Resize), scaled to cover and
    centre-cropped (Crop and Resize), or scaled to fit and centred on the border's median colour (Resize and Fill).

    An inpaint map (RGBA, alpha = mask) has its mask resized alongside, then thresholded at 127 to 0 / 255;
    "Resize and Fill" fills the border with a masked (255) alpha, as sd-webui-controlnet's inpaint hijack does.
    """
    if resize_mode not in _FITS:
        raise ValueError(f"unknown resize mode {resize_mode!r}; valid: {choices(_FITS)}")
    if detected.ndim == 3 and detected.shape[2] == 4:
        colour = _FITS[resize_mode](detected[:, :, :3], width, height)
        mask = _FITS[resize_mode](np.repeat(detected[:, :, 3:], 3, axis=2), width, height, fill=255,
                                  interpolation=_interpolation(detected[:, :, :3], width, height))
        mask = np.where(mask[:, :, :1] > 127, 255, 0).astype(np.uint8)
        return np.ascontiguousarray(np.concatenate([colour, mask], axis=2))
    return np.ascontiguousarray(_FITS[resize_mode](detected, width, height))


def _stretch(detected: np.ndarray, width: int, height: int, fill=None, interpolation=None) -> np.ndarray:
    return _resize_map(detected, width, height, interpolation)


def _cover_and_crop(detected: np.ndarray, width: int, height: int, fill=None, interpolation=None) -> np.ndarray:
    old_h, old_w = detected.shape[:2]
    scale = max(height / old_h, width / old_w)
    scaled = _resize_map(detected, int(np.round(old_w * scale)), int(np.round(old_h * scale)), interpolation)
    top, left = max(0, (scaled.shape[0] - height) // 2), max(0, (scaled.shape[1] - width) // 2)
    return scaled[top : top + height, left : left + width]


def _fit_and_fill(detected: np.ndarray, width: int, height: int, fill=None, interpolation=None) -> np.ndarray:
    old_h, old_w = detected.shape[:2]
    scale = min(height / old_h, width / old_w)
    borders = np.concatenate([detected[0], detected[-1], detected[:, 0], detected[:, -1]], axis=0)
    background = np.median(borders, axis=0).astype(detected.dtype) if fill is None else np.full(3, fill, np.uint8)
    canvas = np.tile(background[None, None], [height, width, 1])
    scaled = _resize_map(detected, int(np.round(old_w * scale)), int(np.round(old_h * scale)), interpolation)
    top, left = max(0, (height - scaled.shape[0]) // 2), max(0, (width - scaled.shape[1]) // 2)
    canvas[top : top + scaled.shape[0], left : left + scaled.shape[1]] = scaled
    return canvas


_FITS: dict[str, Callable[..., np.ndarray]] = {
    JUST_RESIZE: _stretch,
    CROP_AND_RESIZE: _cover_and_crop,
    RESIZE_AND_FILL: _fit_and_fill,
}


def _interpolation(detected: np.ndarray, width: int, height: int) -> int:
    """`high_quality_resize`'s choice: nearest-neighbour for maps of a few flat colours, area when shrinking,
    cubic when enlarging."""
    colours = _colour_count(detected)
    if FEW_COLOURS[0] < colours < FEW_COLOURS[1]:
        return cv2.INTER_NEAREST
    shrinking = width * height < detected.shape[0] * detected.shape[1]
    return cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC


def _resize_map(detected: np.ndarray, width: int, height: int, interpolation: int | None = None) -> np.ndarray:
    """sd-webui-controlnet `high_quality_resize` (see `_interpolation`); a black-and-white map stays black and
    white (Otsu threshold). `interpolation` forces the choice (an inpaint mask follows its image's).

    Unlike sd-webui-controlnet, one-pixel edge maps are not re-thinned after enlarging (its `lvmin_thin`).
    """
    if detected.shape[:2] == (height, width):
        return detected
    if interpolation is not None:
        return cv2.resize(detected, (width, height), interpolation=interpolation)
    resized = cv2.resize(detected, (width, height), interpolation=_interpolation(detected, width, height))
    binary = _colour_count(detected) == 2 and detected.min() < BINARY_DARK and detected.max() > BINARY_BRIGHT
    if binary:
        grey = np.mean(resized.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
        _, grey = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        resized = np.repeat(grey[:, :, None], 3, axis=2)
    return resized


def _colour_count(detected: np.ndarray) -> int:
    """The number of distinct colours (`get_unique_axis0`), with each RGB pixel packed into one integer: sorting
    a million rows as tuples takes seconds, as integers milliseconds."""
    pixels = detected.reshape(-1, detected.shape[2]).astype(np.uint32)
    packed = pixels[:, 0]
    for channel in range(1, pixels.shape[1]):
        packed = (packed << 8) | pixels[:, channel]
    return len(np.unique(packed))
