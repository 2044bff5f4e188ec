"""A unit's control map at one pass's size, as the tensors its model and effects read (sd-webui-controlnet
`detectmap_proc` → `get_pytorch_control`, the "ControlNet inpaint protocol" in `hook.py`)."""

import numpy as np
import torch
from PIL import Image

from engine.control.effects import UnetBlend, inpaint_pixel_post, latent_mask, recolor_pixel_post
from engine.control.preprocess import to_rgb_array


def unit_input(image: Image.Image, mask: Image.Image | None) -> np.ndarray:
    """HWC uint8: RGB, or RGBA with the mask as alpha for the inpaint modules (`combine_image_and_mask`)."""
    rgb = to_rgb_array(image)
    if mask is None:
        return rgb
    return np.ascontiguousarray(np.concatenate([rgb, np.asarray(mask.convert("L"))[:, :, None]], axis=2))


def display_map(fitted: np.ndarray) -> Image.Image:
    """The detected map as returned to the client: RGB, or for inpaint maps sd-webui-controlnet's
    `visualize_inpaint_mask` (RGBA, the masked area half transparent)."""
    if fitted.shape[2] == 4:
        shown = fitted.copy()
        shown[:, :, 3] = 255 - shown[:, :, 3] // 2
        return Image.fromarray(shown, "RGBA")
    return Image.fromarray(fitted)


def pixels(fitted: np.ndarray) -> torch.Tensor:
    """(1, C, H, W) float in [0, 1] (`get_pytorch_control`)."""
    return torch.from_numpy(np.array(fitted)).permute(2, 0, 1)[None].float() / 255.0


def model_hint(fitted: np.ndarray) -> torch.Tensor:
    """What the ControlNet or adapter reads: the map in [0, 1], and for an inpaint map the colour with masked
    pixels set to −1 (`c · (1 − m) − m`, m = mask > 0.5)."""
    hint = pixels(fitted)
    if hint.shape[1] == 4:
        colour, mask = hint[:, :3], (hint[:, 3:4] > 0.5).float()
        hint = colour * (1 - mask) - mask
    return hint


def encode_hint(pipe, fitted: np.ndarray, seed: int) -> torch.Tensor:
    """The latent of the map's colour (sd-webui-controlnet `call_vae_using_process`: ×2 − 1, VAE-encoded).
    A1111 samples the posterior with its global RNG; here a CPU generator seeded with the image's seed."""
    colour = pixels(fitted)[:, :3] * 2.0 - 1.0
    return pipe.encode_pixels(colour, torch.Generator("cpu").manual_seed(int(seed)))


def unet_blend(module, fitted: np.ndarray, origin: torch.Tensor, weight: float, threshold_a: float,
               threshold_b: float, hires: bool) -> UnetBlend:
    """inpaint_only's x0 blend (mask from the map's alpha) or tile_colorfix's low-frequency swap (radius = the
    Variation slider, doubled in the hires pass)."""
    if module.post == "inpaint_only":
        return UnetBlend("inpaint_only", origin, weight, mask=latent_mask(pixels(fitted)[:, 3:4]))
    radius = int(threshold_a) * (2 if hires else 1)
    sharp = threshold_b if "+sharp" in module.name else None
    return UnetBlend("colorfix", origin, weight, radius=radius, sharpness=sharp)


def pixel_post(module, fitted: np.ndarray):
    """The post-decode step of inpaint_only (a 4-channel map) or recolor, or None."""
    if module.post == "inpaint_only" and fitted.shape[2] == 4:
        return inpaint_pixel_post(fitted)
    if module.post == "recolor":
        return recolor_pixel_post(module.name, fitted)
    return None
