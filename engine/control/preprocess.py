"""Control maps: the preprocessors (none, canny, InstantID keypoints) and fitting a map to a pass's size with
the unit's resize mode, as sd-webui-controlnet's `resize_image_with_pad`, `detectmap_proc` and pixel perfect
do. No torch."""

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


def canny_map(image: np.ndarray, resolution: int, low: float, high: float) -> np.ndarray:
    """sd-webui-controlnet's canny: OpenCV Canny on the padded image at `resolution`, white edges on black."""
    padded, remove_pad = resize_with_pad(image, resolution)
    edges = cv2.Canny(padded, int(low), int(high))
    return remove_pad(np.repeat(edges[:, :, None], 3, axis=2))


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


def detect_map(module: str, image: np.ndarray, resolution: int, thresholds: tuple[float, float],
               faces: FaceFinder, field: str) -> np.ndarray:
    """The map a map-producing module draws from an RGB image (HWC uint8, at the preprocessor's scale)."""
    if module not in _MAP_BUILDERS:
        raise ValueError(f"module {module!r} draws no map; map modules: {choices(_MAP_BUILDERS)}")
    return _MAP_BUILDERS[module](image, resolution, thresholds, faces, field)


def _map_none(image: np.ndarray, resolution: int, thresholds, faces: FaceFinder, field: str) -> np.ndarray:
    return image


def _map_canny(image: np.ndarray, resolution: int, thresholds, faces: FaceFinder, field: str) -> np.ndarray:
    return canny_map(image, resolution, *thresholds)


def _map_keypoints(image: np.ndarray, resolution: int, thresholds, faces: FaceFinder, field: str) -> np.ndarray:
    """Keypoints drawn on the padded image's canvas, then the pad cut off (the map is at processor scale)."""
    found = faces(image, resolution, field)
    return found.remove_pad(draw_keypoints(*found.padded_size, found.face.keypoints))


_MAP_BUILDERS: dict[str, Callable[..., np.ndarray]] = {
    "none": _map_none,
    "canny": _map_canny,
    "instant_id_face_keypoints": _map_keypoints,
}


def pixel_perfect_resolution(image_size: tuple[int, int], target_size: tuple[int, int], resize_mode: str) -> int:
    """sd-webui-controlnet `pixel_perfect_resolution`: the processor resolution at which the map needs no
    rescaling. Sizes are (width, height)."""
    (raw_w, raw_h), (target_w, target_h) = image_size, target_size
    scale_h, scale_w = target_h / raw_h, target_w / raw_w
    pick = min if resize_mode == RESIZE_AND_FILL else max
    return int(np.round(pick(scale_h, scale_w) * min(raw_h, raw_w)))


def fit_map(detected: np.ndarray, resize_mode: str, width: int, height: int) -> np.ndarray:
    """The map at exactly width × height (`detectmap_proc`): stretched (Just Resize), scaled to cover and
    centre-cropped (Crop and Resize), or scaled to fit and centred on the border's median colour (Resize and Fill)."""
    if resize_mode not in _FITS:
        raise ValueError(f"unknown resize mode {resize_mode!r}; valid: {choices(_FITS)}")
    return np.ascontiguousarray(_FITS[resize_mode](detected, width, height))


def _stretch(detected: np.ndarray, width: int, height: int) -> np.ndarray:
    return _resize_map(detected, width, height)


def _cover_and_crop(detected: np.ndarray, width: int, height: int) -> np.ndarray:
    old_h, old_w = detected.shape[:2]
    scale = max(height / old_h, width / old_w)
    scaled = _resize_map(detected, int(np.round(old_w * scale)), int(np.round(old_h * scale)))
    top, left = max(0, (scaled.shape[0] - height) // 2), max(0, (scaled.shape[1] - width) // 2)
    return scaled[top : top + height, left : left + width]


def _fit_and_fill(detected: np.ndarray, width: int, height: int) -> np.ndarray:
    old_h, old_w = detected.shape[:2]
    scale = min(height / old_h, width / old_w)
    borders = np.concatenate([detected[0], detected[-1], detected[:, 0], detected[:, -1]], axis=0)
    canvas = np.tile(np.median(borders, axis=0).astype(detected.dtype)[None, None], [height, width, 1])
    scaled = _resize_map(detected, int(np.round(old_w * scale)), int(np.round(old_h * scale)))
    top, left = max(0, (height - scaled.shape[0]) // 2), max(0, (width - scaled.shape[1]) // 2)
    canvas[top : top + scaled.shape[0], left : left + scaled.shape[1]] = scaled
    return canvas


_FITS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    JUST_RESIZE: _stretch,
    CROP_AND_RESIZE: _cover_and_crop,
    RESIZE_AND_FILL: _fit_and_fill,
}


def _resize_map(detected: np.ndarray, width: int, height: int) -> np.ndarray:
    """sd-webui-controlnet `high_quality_resize`: nearest-neighbour for maps of a few flat colours, area when
    shrinking, cubic when enlarging; a black-and-white map stays black-and-white (Otsu threshold).

    Unlike sd-webui-controlnet, one-pixel edge maps are not re-thinned after enlarging (its `lvmin_thin`).
    """
    if detected.shape[:2] == (height, width):
        return detected
    colours = len(np.unique(detected.reshape(-1, detected.shape[2]), axis=0))
    shrinking = width * height < detected.shape[0] * detected.shape[1]
    if FEW_COLOURS[0] < colours < FEW_COLOURS[1]:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    resized = cv2.resize(detected, (width, height), interpolation=interpolation)
    binary = colours == 2 and detected.min() < BINARY_DARK and detected.max() > BINARY_BRIGHT
    if binary:
        grey = np.mean(resized.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
        _, grey = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        resized = np.repeat(grey[:, :, None], 3, axis=2)
    return resized
