"""ReActor's face mask correction (`mask_face`): each swapped face is pasted back only where a face parser sees
face, and after the swaps the whole image is put back over the original through the union of those masks.

Re-implemented from Gourieff/sd-webui-reactor (AGPL-3.0): `reactor_modules/reactor_mask.py` `apply_face_mask`,
`scripts/reactor_entities/face.py` `FaceArea`, `scripts/reactor_entities/rect.py` `Rect.to_square`,
`scripts/reactor_inferencers/bisenet_mask_generator.py`, and `reactor_swapper.py` `operate` /
`enhance_image_and_mask`. The parser is facexlib's BiSeNet (`init_parsing_model("bisenet")`,
`parsing_bisenet.pth`), which A1111's `patch_facexlib` stores in `models/GFPGAN`; it is not the ParseNet the
face restorers use.

For one target face: the face box is made square (odd sides grown by one), widened 1.6 times (less when the
image is smaller) and shifted inside the image; that region is resized to 512 × 512, everything outside the
box blacked out, and BiSeNet's classes 1–13 (skin, brows, eyes, glasses, ears, earring, nose, mouth, lips)
become the mask, box-blurred 12 × 12 and resized back onto the region.
"""

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image


logger = logging.getLogger(__name__)

MASK_MODEL_FILE = "parsing_bisenet.pth"
FACE_MARGIN = 1.6
FACE_SIZE = 512
FACE_CLASSES = range(1, 14)  # BiSeNet's face-parsing labels below 14 (14 is the neck)
BLUR = (12, 12)


def load_mask_parser(path: Path, device: torch.device) -> torch.nn.Module:
    """facexlib's BiSeNet with 19 classes, as `init_parsing_model("bisenet")` builds it, from `path` only."""
    from facexlib.parsing.bisenet import BiSeNet

    from engine.restore.face_models import read_weights

    parser = BiSeNet(num_class=19)
    parser.load_state_dict(read_weights(path), strict=True)
    logger.info("loaded face mask parser %s on %s", Path(path).name, device)
    return parser.to(device).eval()


def face_region(bbox, height: int, width: int) -> tuple[int, int, int, int]:
    """ReActor's `FaceArea` region (left, top, right, bottom) around a face box on a `height` × `width` image."""
    left, top, right, bottom = (int(value) for value in bbox[:4])
    # `Rect.to_square`: even sides, then the shorter side grown on both ends.
    if (right - left) % 2 == 1:
        right += 1
    if (bottom - top) % 2 == 1:
        bottom += 1
    diff = int(abs((right - left) - (bottom - top)) / 2)
    if right - left > bottom - top:
        top, bottom = top - diff, bottom + diff
    else:
        left, right = left - diff, right + diff
    # `__ensure_margin`: widened by the margin, then shifted back inside the image.
    side = right - left
    margin = min(min(height, width) / side, FACE_MARGIN)
    diff = int((side * margin - side) / 2)
    top, bottom, left, right = top - diff, bottom + diff, left - diff, right + diff
    if top < 0:
        bottom, top = bottom - top, 0
    if left < 0:
        right, left = right - left, 0
    if bottom > height:
        top, bottom = top - (bottom - height), height
    if right > width:
        left, right = left - (right - width), width
    return left, top, right, bottom


def box_on_crop(bbox, region: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The face box in the 512-pixel crop of `region` (`FaceArea.__get_face_area_on_image`), clipped to it."""
    left, top, right, _ = region
    scale = FACE_SIZE / (right - left)
    box = (int(bbox[0]), int(bbox[1]), int(bbox[2]), int(bbox[3]))
    values = (int((box[0] - left) * scale), int((box[1] - top) * scale),
              int((box[2] - left) * scale), int((box[3] - top) * scale))
    return tuple(min(max(value, 0), FACE_SIZE) for value in values)


class FaceMask:
    """One image's face mask correction: `paste` after each swap, `mask` (mode "L") for the final blend."""

    def __init__(self, parser: torch.nn.Module, shape: tuple[int, ...]):
        self.parser = parser
        self.entire = np.zeros(shape, np.uint8)  # ReActor's `entire_mask_image`: 3 channels, like the image

    @property
    def mask(self) -> Image.Image:
        return Image.fromarray(self.entire).convert("L")

    def paste(self, swapped: np.ndarray, before: np.ndarray, bbox) -> np.ndarray:
        """`swapped` over `before` (both BGR uint8) through every face mask drawn so far, this face's added."""
        height, width = before.shape[:2]
        left, top, right, bottom = face_region(bbox, height, width)
        crop = cv2.resize(before[top:bottom, left:right], (FACE_SIZE, FACE_SIZE))
        mask = cv2.blur(self._parse(crop, box_on_crop(bbox, (left, top, right, bottom))), BLUR)
        self.entire[top:bottom, left:right] = cv2.resize(mask, (right - left, bottom - top))
        return np.asarray(Image.composite(Image.fromarray(swapped), Image.fromarray(before), self.mask))

    @torch.no_grad()
    def _parse(self, crop: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The face classes of the BGR crop as a 3-channel 0/255 mask. Only the face box is shown to the parser
        (`mask_non_face_areas`). ReActor flips the crop to RGB and facexlib's `img2tensor` flips it back, so
        BiSeNet reads BGR."""
        left, top, right, bottom = box
        shown = np.zeros_like(crop)
        shown[top:bottom, left:right] = crop[top:bottom, left:right]
        pixels = torch.from_numpy(shown.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        parameter = next(self.parser.parameters())
        logits = self.parser(((pixels - 0.5) / 0.5).to(parameter.device, parameter.dtype))[0]
        labels = logits[0].argmax(0).cpu().numpy()
        face = np.isin(labels, FACE_CLASSES)
        return np.repeat((face * 255).astype(np.uint8)[:, :, None], 3, axis=2)
