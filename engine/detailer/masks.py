"""ADetailer's mask operations (`adetailer/mask.py`, v25.3.0): filter, top-k, sort, offset, dilate/erode, merge."""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce

import cv2
import numpy as np
from PIL import Image, ImageChops, ImageDraw


Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the detected image

TOP_K_METHODS = ("Area", "Confidence")
MERGE_MODES = ("None", "Merge", "Merge and Invert")
# The server option `ad_bbox_sortby` (not a request field); "None" keeps the detector's order.
SORT_ORDERS = ("None", "Position (left to right)", "Position (center to edge)", "Area (large to small)")


@dataclass(frozen=True)
class Detections:
    """What a detector found on one image: one box, confidence and full-size "L" mask (0/255) per object."""

    image_size: tuple[int, int]  # (width, height)
    boxes: tuple[Box, ...] = ()
    confidences: tuple[float, ...] = ()
    masks: tuple[Image.Image, ...] = ()

    def __post_init__(self):
        if not len(self.boxes) == len(self.confidences) == len(self.masks):
            raise ValueError("Detections needs one confidence and one mask per box")

    def __len__(self) -> int:
        return len(self.boxes)

    def take(self, indices: Sequence[int]) -> "Detections":
        """The detections at `indices`, in that order."""
        return Detections(self.image_size, tuple(self.boxes[i] for i in indices),
                          tuple(self.confidences[i] for i in indices), tuple(self.masks[i] for i in indices))


@dataclass(frozen=True)
class MaskOptions:
    """One ADetailer unit's mask settings, in the order ADetailer applies them."""

    min_ratio: float = 0.0
    max_ratio: float = 1.0
    top_k: int = 0  # 0 keeps every detection
    top_k_by: str = "Area"
    sort_by: str = "None"
    x_offset: int = 0  # pixels to the right
    y_offset: int = 0  # pixels *up*
    dilate_erode: int = 4  # > 0 dilates, < 0 erodes, by a |value|×|value| rectangle
    merge_invert: str = "None"


def bbox_area(box: Box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def box_mask(image_size: tuple[int, int], box: Box) -> Image.Image:
    """A filled rectangle mask, drawn as ADetailer's `create_mask_from_bbox` does (PIL, corners inclusive)."""
    mask = Image.new("L", image_size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def filter_by_ratio(found: Detections, low: float, high: float) -> Detections:
    """Keep boxes whose area / image area lies in [low, high]; the *box* area, even for segmentation masks."""
    width, height = found.image_size
    keep = [i for i, box in enumerate(found.boxes) if low <= bbox_area(box) / (width * height) <= high]
    return found.take(keep)


def keep_top_k(found: Detections, k: int, by: str = "Area") -> Detections:
    """The k largest (or most confident) detections, largest first; k = 0 keeps all in their order.

    ADetailer takes the last k of numpy's default `argsort` and reverses them; so do we, so that ties
    resolve the same way.
    """
    if k == 0 or not len(found):
        return found
    keys = {"Area": lambda: [bbox_area(box) for box in found.boxes], "Confidence": lambda: list(found.confidences)}
    if by not in keys:
        raise ValueError(f"unknown top-k method {by!r}; valid: {', '.join(TOP_K_METHODS)}")
    order = np.argsort(keys[by]())[-k:][::-1]
    return found.take([int(i) for i in order])


def sort_detections(found: Detections, order: str = "None") -> Detections:
    """ADetailer's `ad_bbox_sortby` server option; Python's stable sort, as ADetailer."""
    width, height = found.image_size
    centre = (width / 2, height / 2)
    keys: dict[str, Callable[[Box], float] | None] = {
        "None": None,
        "Position (left to right)": lambda box: box[0],
        "Position (center to edge)": lambda box: math.dist(centre, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)),
        "Area (large to small)": lambda box: -bbox_area(box),
    }
    if order not in keys:
        raise ValueError(f"unknown box order {order!r}; valid: {', '.join(SORT_ORDERS)}")
    key = keys[order]
    if key is None or len(found) <= 1:
        return found
    return found.take(sorted(range(len(found)), key=lambda i: key(found.boxes[i])))


def offset_mask(mask: Image.Image, x: int, y: int) -> Image.Image:
    """Move a mask x pixels right and y pixels up; what leaves one edge re-enters at the opposite edge
    (`ImageChops.offset` wraps around, like `np.roll`)."""
    return ImageChops.offset(mask, x, -y)


def dilate_erode(mask: Image.Image, value: int) -> Image.Image:
    """cv2 dilation (value > 0) or erosion (value < 0) with a |value|×|value| rectangle, one iteration.

    cv2 anchors the kernel at its centre, |value| // 2: an even kernel of 4 grows a mask by 1 pixel on the
    left/top and 2 on the right/bottom.
    """
    if value == 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (abs(value), abs(value)))
    morph = cv2.dilate if value > 0 else cv2.erode
    return Image.fromarray(morph(np.asarray(mask.convert("L")), kernel, iterations=1))


def is_empty(mask: Image.Image) -> bool:
    return mask.getbbox() is None


def merge_invert(masks: Sequence[Image.Image], mode: str = "None") -> list[Image.Image]:
    """"Merge" ORs every mask into one; "Merge and Invert" also inverts it; "None" leaves the list as it is."""
    if mode not in MERGE_MODES:
        raise ValueError(f"unknown merge mode {mode!r}; valid: {', '.join(MERGE_MODES)}")
    if mode == "None" or not masks:
        return list(masks)
    merged = Image.fromarray(reduce(np.bitwise_or, [np.asarray(mask.convert("L")) for mask in masks]))
    return [ImageChops.invert(merged) if mode == "Merge and Invert" else merged]


def prepare_masks(found: Detections, options: MaskOptions) -> list[Image.Image]:
    """ADetailer's `pred_preprocessing`: the masks to inpaint, one inpaint pass each, in order.

    Order: area-ratio filter, top-k, sort, offset, dilate/erode, drop empty masks, merge/invert. ADetailer
    drops empty masks only after a dilate/erode; we always do (an empty mask has nothing to inpaint).
    """
    found = filter_by_ratio(found, options.min_ratio, options.max_ratio)
    found = keep_top_k(found, options.top_k, options.top_k_by)
    found = sort_detections(found, options.sort_by)
    masks = list(found.masks)
    if options.x_offset or options.y_offset:
        masks = [offset_mask(mask, options.x_offset, options.y_offset) for mask in masks]
    masks = [dilate_erode(mask, options.dilate_erode) for mask in masks]
    masks = [mask for mask in masks if not is_empty(mask)]
    return merge_invert(masks, options.merge_invert)


def keep_intersecting(masks: Sequence[Image.Image], user_mask: Image.Image) -> list[Image.Image]:
    """img2img inpainting (not "only masked"): ADetailer keeps only the masks that touch the user's mask.

    "Touch" is ADetailer's test: a nonzero bitwise AND of the two 8-bit masks.
    """
    painted = np.asarray(user_mask.convert("L"))
    return [mask for mask in masks if np.any(np.bitwise_and(painted, np.asarray(mask.convert("L"))))]
