"""The InstantID keypoint map: five face keypoints drawn as InstantID's `draw_kps` draws them. No torch."""

import math
from collections.abc import Sequence

import cv2
import numpy as np


# Colour per keypoint in SCRFD's order: left eye, right eye, nose, left and right mouth corner (image left/right).
KEYPOINT_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
# Each limb joins a keypoint to the nose and takes that keypoint's colour.
LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))
STICK_HALF_WIDTH = 4  # the ellipse's minor semi-axis, pixels
LIMB_DIMMING = 0.6  # limbs end up at 60 % intensity (153 for a 255 channel); the dots stay full
DOT_RADIUS = 10


def draw_keypoints(width: int, height: int, keypoints: Sequence[Sequence[float]]) -> np.ndarray:
    """An RGB uint8 map of width × height: a filled ellipse per limb, dimmed, then a filled dot per keypoint.

    Coordinates are truncated to whole pixels and the ellipse is OpenCV's 1-degree polygon, as InstantID,
    sd-webui-controlnet, Forge and ComfyUI all draw it.
    """
    points = np.asarray(keypoints, dtype=np.float64)
    if points.shape != (len(KEYPOINT_COLOURS), 2):
        raise ValueError(f"expected {len(KEYPOINT_COLOURS)} (x, y) keypoints, got shape {points.shape}")
    canvas = np.zeros((height, width, 3), dtype=np.float64)
    for start, end in LIMBS:
        (x0, y0), (x1, y1) = points[start], points[end]
        centre = (int((x0 + x1) / 2), int((y0 + y1) / 2))
        half_length = int(math.hypot(x0 - x1, y0 - y1) / 2)
        angle = int(math.degrees(math.atan2(y0 - y1, x0 - x1)))
        outline = cv2.ellipse2Poly(centre, (half_length, STICK_HALF_WIDTH), angle, 0, 360, 1)
        cv2.fillConvexPoly(canvas, outline, KEYPOINT_COLOURS[start])
    drawn = (canvas * LIMB_DIMMING).astype(np.uint8)
    for (x, y), colour in zip(points, KEYPOINT_COLOURS, strict=True):
        cv2.circle(drawn, (int(x), int(y)), DOT_RADIUS, colour, -1)
    return drawn
