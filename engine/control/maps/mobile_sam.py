"""mobile_sam (Segmentation) as sd-webui-controlnet v1.1.455 runs it (`scripts/preprocessor/mobile_sam.py`: pad
to 64 at the processor resolution, run, cut the pad; `annotator/mobile_sam/__init__.py`, `SamDetector_Aux`;
GPL-3.0, re-implemented here): MobileSAM's vit_t (TinyViT encoder, SAM's prompt encoder and
mask decoder; Apache-2.0) from controlnet_aux's `segment_anything`, its `SamAutomaticMaskGenerator` with default
arguments (a 32 × 32 point grid), and controlnet_aux's `SamDetector.show_anns` colouring (Apache-2.0): masks
largest first, each painted one random colour over the ones before it, on black.

The one difference: `show_anns` draws the colours from NumPy's global RNG (which sd-webui-controlnet seeds with
seed + subseed before preprocessing); here a private `RandomState` seeded with the same number draws the same
colours, and the worker's global RNG is left untouched. A picture where no mask passes the generator's filters
gives a black map (controlnet_aux's `show_anns` returns None there and its caller fails).
"""

import numpy as np
import torch


POINTS_PER_SIDE = 32  # SamAutomaticMaskGenerator's default grid, as sd-webui-controlnet builds it


def load_mobile_sam(weights: dict):
    """MobileSAM's vit_t with the checkpoint's weights (a plain state dict, `mobile_sam.pt`)."""
    from engine.control.maps.annotators import quiet_import

    sam = quiet_import("controlnet_aux.segment_anything.build_sam").build_sam_vit_t()
    sam.load_state_dict(weights, strict=True)
    return sam.eval()


def paint_masks(masks: list[dict], height: int, width: int, seed: int) -> np.ndarray:
    """`SamDetector.show_anns` with a private RNG: masks by area, largest first, one colour (three draws of
    `randint(255)`, as there) each, later masks over earlier ones."""
    rng = np.random.RandomState(seed)
    painted = np.zeros((height, width, 3), np.uint8)
    for mask in sorted(masks, key=lambda found: found["area"], reverse=True):
        colour = [rng.randint(255, dtype=np.uint8) for _ in range(3)]
        painted[mask["segmentation"]] = colour
    return painted


class MobileSamDetector:
    """`SamDetector_Aux.__call__` (output "cv2"): resize the short side to the detect resolution (multiple of 64),
    generate the masks, paint them, resize the map to the image resolution's size."""

    def __init__(self, sam):
        self.sam = sam

    def to(self, device):
        self.sam.to(device)
        return self

    @torch.no_grad()
    def __call__(self, image: np.ndarray, resolution: int, seed: int) -> np.ndarray:
        import cv2

        from engine.control.maps.annotators import quiet_import

        util = quiet_import("controlnet_aux.util")
        generator = quiet_import("controlnet_aux.segment_anything.automatic_mask_generator")
        picture = util.resize_image(util.HWC3(image), resolution)
        masks = generator.SamAutomaticMaskGenerator(self.sam, points_per_side=POINTS_PER_SIDE).generate(picture)
        painted = util.HWC3(paint_masks(masks, *picture.shape[:2], seed))
        height, width = util.resize_image(picture, resolution).shape[:2]
        return cv2.resize(painted, (width, height), interpolation=cv2.INTER_LINEAR)
