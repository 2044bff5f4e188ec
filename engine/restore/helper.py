"""Detect → align → restore → paste back, as A1111 v1.10 `face_restoration_utils.restore_with_face_helper` does
it with facexlib's `FaceRestoreHelper` (retinaface_resnet50, upscale 1, 512-pixel faces, crop ratio 1, face
parsing for the paste mask). facexlib does the geometry (5-landmark similarity transform onto FFHQ's template
with `cv2.estimateAffinePartial2D`, `warpAffine`, inverse affine, parse-mask blending); this module feeds it.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from facexlib.utils.face_restoration_helper import FaceRestoreHelper
from PIL import Image

from engine.restore.face_models import FaceModels


FACE_SIZE = 512
# facexlib's 5-point FFHQ template for 512-pixel faces (eyes, nose tip, mouth corners), what its
# FaceRestoreHelper aligns to when template_3points is off.
FFHQ_TEMPLATE_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
     [201.26117, 371.41043], [313.08905, 371.15118]]
)
# A1111's `get_face_landmarks_5` arguments: detect on the image resized to 640 on its short side, every face,
# dropping those whose eyes are less than 5 pixels apart (side or tiny faces).
DETECTION_SIZE = 640
MIN_EYE_DISTANCE = 5

# A restorer network's call on one aligned face: a (1, 3, 512, 512) RGB tensor in [-1, 1] → the same shape.
RestoreFace = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RestoredFace:
    """One face that was restored: where the detector put it, and how its 512-pixel crop maps back."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    landmarks: np.ndarray  # (5, 2): eyes, nose, mouth corners in image pixels
    inverse_affine: np.ndarray  # (2, 3): crop pixels → image pixels


@dataclass(frozen=True)
class Restoration:
    image: Image.Image
    faces: tuple[RestoredFace, ...]


class FaceHelper(FaceRestoreHelper):
    """facexlib's helper with the state its `__init__` sets for A1111's arguments, but with networks already
    loaded from the models folder (facexlib's `__init__` would load, and download, its own). One per image:
    it keeps the image's faces as state."""

    def __init__(self, models: FaceModels):  # not calling super().__init__: it would load the networks
        self.template_3points = False
        self.upscale_factor = 1
        self.crop_ratio = (1, 1)
        self.face_size = (FACE_SIZE, FACE_SIZE)
        self.face_template = FFHQ_TEMPLATE_512.copy()
        self.save_ext = "png"
        self.pad_blur = False
        self.device = models.device
        self.face_det = models.detector
        self.use_parse = True
        self.face_parse = models.parser
        self.clean_all()


def restore_with_face_helper(image: Image.Image, models: FaceModels, restore_face: RestoreFace) -> Restoration:
    """Every face in `image` restored by `restore_face` and pasted back; the image itself when none is found.

    Colour handling is A1111's: the helper works on BGR uint8, each crop goes in as RGB in [-1, 1] and comes
    out clamped, scaled by 255 and truncated to uint8.
    """
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    helper = FaceHelper(models)
    helper.read_image(bgr)
    helper.get_face_landmarks_5(only_center_face=False, resize=DETECTION_SIZE, eye_dist_threshold=MIN_EYE_DISTANCE)
    helper.align_warp_face()
    if not helper.cropped_faces:
        return Restoration(image, ())
    for crop in helper.cropped_faces:
        with torch.no_grad():
            restored = restore_face(_to_network(crop, models.device))
        helper.add_restored_face(_to_bgr_uint8(restored))
    helper.get_inverse_affine(None)
    pasted = helper.paste_faces_to_input_image()
    faces = tuple(
        RestoredFace(tuple(float(v) for v in box[:4]), landmarks.copy(), inverse.copy())
        for box, landmarks, inverse in zip(
            helper.det_faces, helper.all_landmarks_5, helper.inverse_affine_matrices, strict=True
        )
    )
    return Restoration(Image.fromarray(np.ascontiguousarray(pasted[:, :, ::-1])), faces)


def _to_network(crop_bgr: np.ndarray, device: torch.device) -> torch.Tensor:
    """A1111 `bgr_image_to_rgb_tensor(crop / 255)` then `normalize(0.5, 0.5)`: (1, 3, H, W) in [-1, 1]."""
    rgb = (crop_bgr[:, :, ::-1] / 255.0).astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    return ((tensor - 0.5) / 0.5).unsqueeze(0).to(device)


def _to_bgr_uint8(tensor: torch.Tensor) -> np.ndarray:
    """A1111 `rgb_tensor_to_bgr_image(t, min_max=(-1, 1))` then `(· 255).astype(uint8)` (truncating)."""
    rgb = (tensor.squeeze(0).float().detach().cpu().clamp_(-1, 1) + 1) / 2
    bgr = rgb.numpy().transpose(1, 2, 0)[:, :, ::-1]
    return np.ascontiguousarray(bgr * 255.0).astype(np.uint8)
