"""Poses as sd-webui-controlnet v1.1.455 keeps, draws and reports them (`annotator/openpose/__init__.py`,
`util.py`, `wholebody.py`, `animalpose.py`, `types.py`; the drawing is ControlNet's, after CMU OpenPose). No torch.

- `wholebody_people`: DWPose's 133 COCO-WholeBody keypoints → OpenPose's 18 body points (a neck added between
  the shoulders, the order remapped), 21 per hand, 68 face points plus the two eyes; points scoring < 0.3 are
  missing (None).
- `draw_people` / `draw_animals`: limbs as filled ellipses at 60 % colour and dots (body), HSV-coloured lines
  (hands), white dots (face), AP-10K limbs as lines. Coordinates are fractions of the canvas when every point of
  a part lies in [0, 1] (OpenPose's), else pixels (DWPose's).
- `poses_json`: the OpenPose JSON `/controlnet/detect` answers under "poses".
"""

import colorsys
import math
from typing import NamedTuple

import cv2
import numpy as np


class Keypoint(NamedTuple):
    x: float
    y: float
    score: float = 1.0
    id: int = -1


Part = list[Keypoint | None] | None


class Person(NamedTuple):
    body: list[Keypoint | None]
    left_hand: Part
    right_hand: Part
    face: Part


VISIBLE = 0.3  # DWPose keypoints scoring below are left out
# COCO-WholeBody indices after the neck is inserted at 17: mmpose order → OpenPose order.
MMPOSE_ORDER = (17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3)
OPENPOSE_ORDER = (1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17)
BODY, FACE, LEFT_HAND, RIGHT_HAND = slice(0, 18), slice(24, 92), slice(92, 113), slice(113, 134)
LEFT_EYE, RIGHT_EYE = 14, 15

LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
         (2, 1), (1, 15), (15, 17), (1, 16), (16, 18))  # 1-based body point pairs
BODY_COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
                (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
                (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
STICK_WIDTH, LIMB_DIMMING, BODY_DOT, HAND_DOT, FACE_DOT = 4, 0.6, 4, 4, 3
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
EPS = 0.01  # hand and face points at or left of / above this pixel are not drawn
ANIMAL_LIMBS = ((1, 2), (2, 3), (1, 3), (3, 4), (4, 9), (9, 10), (10, 11), (4, 6), (6, 7), (7, 8), (4, 5), (5, 15),
                (15, 16), (16, 17), (5, 12), (12, 13), (13, 14))
ANIMAL_COLOURS = ((255, 255, 255), (100, 255, 100), (150, 255, 255), (100, 50, 255), (50, 150, 200), (0, 255, 255),
                  (0, 150, 0), (0, 0, 255), (0, 0, 150), (255, 50, 255), (255, 0, 255), (255, 0, 0), (150, 0, 0),
                  (255, 255, 100), (0, 150, 0), (255, 255, 0), (150, 150, 150))
ANIMAL_LINE = 5


def wholebody_people(found: tuple[np.ndarray, np.ndarray] | None) -> list[Person]:
    """DWPose keypoints (N, 133, 2) and scores (N, 133) as OpenPose-shaped people (`Wholebody.format_result`)."""
    if found is None:
        return []
    keypoints, scores = found
    info = np.concatenate((keypoints, scores[..., None]), axis=-1)
    neck = np.mean(info[:, [5, 6]], axis=1)
    neck[:, 2:4] = np.logical_and(info[:, 5, 2:4] > VISIBLE, info[:, 6, 2:4] > VISIBLE).astype(int)
    info = np.insert(info, 17, neck, axis=1)
    info[:, OPENPOSE_ORDER] = info[:, MMPOSE_ORDER]
    people = []
    for instance in info:
        body = _visible(instance[BODY]) or [None] * 18
        face = _visible(instance[FACE])
        if face is not None:
            face += [body[LEFT_EYE], body[RIGHT_EYE]]  # OpenPose's face has 70 points, DWPose's 68
        people.append(Person(body, _visible(instance[LEFT_HAND]), _visible(instance[RIGHT_HAND]), face))
    return people


def _visible(part: np.ndarray) -> Part:
    points = [Keypoint(x, y, score, i) if score >= VISIBLE else None for i, (x, y, score) in enumerate(part)]
    return None if all(point is None for point in points) else points


def animal_poses(found: tuple[np.ndarray, np.ndarray] | None) -> list[list[Keypoint]]:
    """AP-10K keypoints, every point kept, scores clipped to [0, 1] (`AnimalPose.__call__`)."""
    if found is None or len(found[0]) == 0:
        return []
    keypoints, scores = found
    return [[Keypoint(x, y, c) for x, y, c in np.concatenate((points, np.clip(score, 0.0, 1.0)[..., None]),
                                                              axis=-1).tolist()]
            for points, score in zip(keypoints, scores, strict=True)]


def draw_people(people: list[Person], height: int, width: int, body=True, hand=True, face=True) -> np.ndarray:
    canvas = np.zeros((height, width, 3), np.uint8)
    for person in people:
        if body:
            _draw_body(canvas, person.body)
        if hand:
            _draw_hand(canvas, person.left_hand)
            _draw_hand(canvas, person.right_hand)
        if face:
            _draw_face(canvas, person.face)
    return canvas


def _scale(canvas: np.ndarray, points: list[Keypoint | None]) -> tuple[float, float]:
    """(H, W) for fractional coordinates (`is_normalized`), (1, 1) for pixels."""
    present = [point for point in points if point is not None]
    fractional = bool(present) and all(abs(p.x) <= 1 and abs(p.y) <= 1 for p in present)
    return (canvas.shape[0], canvas.shape[1]) if fractional else (1.0, 1.0)


def _draw_body(canvas: np.ndarray, points: list[Keypoint | None]) -> None:
    height, width = _scale(canvas, points)
    for (first, second), colour in zip(LIMBS, BODY_COLOURS, strict=False):
        a, b = points[first - 1], points[second - 1]
        if a is None or b is None:
            continue
        ys, xs = np.array([a.x, b.x]) * float(width), np.array([a.y, b.y]) * float(height)
        length = ((xs[0] - xs[1]) ** 2 + (ys[0] - ys[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(xs[0] - xs[1], ys[0] - ys[1]))
        polygon = cv2.ellipse2Poly((int(np.mean(ys)), int(np.mean(xs))), (int(length / 2), STICK_WIDTH), int(angle),
                                   0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * LIMB_DIMMING) for c in colour])
    for point, colour in zip(points, BODY_COLOURS, strict=False):
        if point is not None:
            cv2.circle(canvas, (int(point.x * width), int(point.y * height)), BODY_DOT, colour, thickness=-1)


def _draw_hand(canvas: np.ndarray, points: Part) -> None:
    if not points:
        return
    height, width = _scale(canvas, points)
    for index, (first, second) in enumerate(HAND_EDGES):
        a, b = points[first], points[second]
        if a is None or b is None:
            continue
        x1, y1, x2, y2 = int(a.x * width), int(a.y * height), int(b.x * width), int(b.y * height)
        if min(x1, y1, x2, y2) > EPS:
            colour = np.array(colorsys.hsv_to_rgb(index / float(len(HAND_EDGES)), 1.0, 1.0)) * 255
            cv2.line(canvas, (x1, y1), (x2, y2), colour.tolist(), thickness=2)
    for point in points:
        if point is not None and int(point.x * width) > EPS and int(point.y * height) > EPS:
            cv2.circle(canvas, (int(point.x * width), int(point.y * height)), HAND_DOT, (0, 0, 255), thickness=-1)


def _draw_face(canvas: np.ndarray, points: Part) -> None:
    if not points:
        return
    height, width = _scale(canvas, points)
    for point in points:
        if point is not None and int(point.x * width) > EPS and int(point.y * height) > EPS:
            cv2.circle(canvas, (int(point.x * width), int(point.y * height)), FACE_DOT, (255, 255, 255), thickness=-1)


def draw_animals(animals: list[list[Keypoint]], height: int, width: int) -> np.ndarray:
    canvas = np.zeros((height, width, 3), np.uint8)
    for points in animals:
        for (first, second), colour in zip(ANIMAL_LIMBS, ANIMAL_COLOURS, strict=True):
            a, b = points[first - 1], points[second - 1]
            if a is not None and b is not None:
                cv2.line(canvas, (int(a.x), int(a.y)), (int(b.x), int(b.y)), colour, ANIMAL_LINE)
    return canvas


def poses_json(people, animals, height: int, width: int) -> dict:
    """`encode_poses_as_json`: OpenPose's JSON, each part flattened to (x, y, 1.0), a missing point (0, 0, 0), a
    missing part null; coordinates as the detector gave them (fractions for OpenPose, pixels for DWPose)."""
    def flat(points):
        if not points:
            return None
        return [value for point in points
                for value in ([float(point.x), float(point.y), 1.0] if point is not None else [0.0, 0.0, 0.0])]

    return {
        "people": [{"pose_keypoints_2d": flat(person.body),
                    "face_keypoints_2d": flat(person.face),
                    "hand_left_keypoints_2d": flat(person.left_hand),
                    "hand_right_keypoints_2d": flat(person.right_hand)} for person in people],
        "animals": [flat(animal) for animal in animals],
        "canvas_height": height,
        "canvas_width": width,
    }
