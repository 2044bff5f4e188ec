"""What some modules do besides conditioning a ControlNet, as sd-webui-controlnet v1.1.455 does it
(`scripts/hook.py` UNet forward, `scripts/controlnet.py` post-processors; GPL-3.0, re-implemented here):

- `inpaint_only` / `inpaint_only+lama`: after each UNet call, the clean-latent estimate keeps the control image's
  latent outside the (dilated) mask, blended by the unit's weight; after decoding, the pixels outside the blurred
  mask are the control image's;
- `inpaint_only+lama`: the first pass's initial noise starts from the LaMa-filled image at t = 999;
- `tile_colorfix(+sharp)`: after each UNet call, the low frequencies of the estimate are the control image's;
- `recolor_*`: after decoding, the luminance (Lab L) or intensity (HSV V) is the control map's.
"""

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F


INPAINT_BLUR_SIGMA = 7  # sd-webui-controlnet's `control_net_inpaint_blur_sigma` option (default 7)
NOISE_TIMESTEP = 999  # `HackedImageRNG`: the LaMa image is noised to the last DDPM timestep


def box_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """sd-webui-controlnet `blur`: a (2k + 1)² mean filter with replicated borders."""
    padded = F.pad(x, (k, k, k, k), mode="replicate")
    return F.avg_pool2d(padded, (k * 2 + 1, k * 2 + 1), stride=(1, 1))


@dataclass(frozen=True)
class UnetBlend:
    """Rewrites the UNet's ε so that its clean-latent estimate x0 is blended with the control image's latent.

    Attributes:
        kind: "inpaint_only" or "colorfix".
        origin: (1, 4, h, w) latent of the control image at this pass's size.
        mask: (1, 1, h, w) latent mask (inpaint_only): 1 = repaint.
        weight: the unit's weight (clamped to [0, 1] when mixing ε).
        radius: colorfix's blur radius k (the Variation slider, doubled in the hires pass).
        sharpness: colorfix+sharp's slider (None: plain colorfix).
    """

    kind: str
    origin: torch.Tensor
    weight: float
    mask: torch.Tensor | None = None
    radius: int = 0
    sharpness: float | None = None

    def apply(self, eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
              cond: torch.Tensor) -> torch.Tensor:
        """ε after blending. x: the UNet's (variance-preserving) input latent rows, t: the timestep, cond: per
        row 1 for prompt rows, 0 for negative rows (colorfix+sharp blurs only the negative rows)."""
        alpha = alphas_cumprod.to(x.device)[torch.round(t.float()).long().clamp(0, len(alphas_cumprod) - 1)]
        alpha = alpha.reshape(-1, 1, 1, 1).to(torch.float32)
        xt, eps32 = x[:, :4].float(), eps.float()
        x0_predicted = (xt - (1 - alpha).sqrt() * eps32) / alpha.sqrt()
        origin = self.origin.to(x.device, torch.float32)
        if self.kind == "inpaint_only":
            mask = self.mask.to(x.device, torch.float32)
            x0 = x0_predicted * mask + origin * (1 - mask)
        else:
            x0 = x0_predicted - box_blur(x0_predicted, self.radius) + box_blur(origin, self.radius)
            if self.sharpness is not None:
                detail = self.sharpness * 0.01
                negative = detail * box_blur(x0, self.radius) + (1 - detail) * x0
                mark = cond.to(x.device, torch.float32).reshape(-1, 1, 1, 1)
                x0 = mark * x0 + (1 - mark) * negative
        eps_blended = (xt - alpha.sqrt() * x0) / (1 - alpha).sqrt()
        weight = max(0.0, min(1.0, float(self.weight)))
        return (eps_blended * weight + eps32 * (1 - weight)).to(eps.dtype)


def latent_mask(mask_pixels: torch.Tensor) -> torch.Tensor:
    """inpaint_only's latent mask: max-pool 10 × 10, stride 8, pad 1 of the pixel mask (1, 1, H, W) in [0, 1]."""
    return F.max_pool2d(mask_pixels, (10, 10), stride=(8, 8), padding=1)


def noised_start(initial: torch.Tensor, origin: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """`HackedImageRNG.next`: the unit noise becomes q(x_999 | x0 = origin) with that noise; the sampler then
    scales it as it scales any initial noise. Shapes must match (other passes keep their noise)."""
    if initial.shape[-2:] != origin.shape[-2:]:
        return initial
    alpha = alphas_cumprod[NOISE_TIMESTEP].to(initial.device, torch.float32)
    return alpha.sqrt() * origin.to(initial) + (1 - alpha).sqrt() * initial


@dataclass(frozen=True)
class PixelPost:
    """A change to each decoded image (values in [0, 1], HWC float), before any inpaint paste-back.

    kind: "inpaint_only" (raw: the control image, mask: its dilated + blurred mask) or "recolor_luminance" /
    "recolor_intensity" (feed: the control map's grey channel, uint8).
    """

    kind: str
    raw: np.ndarray | None = None  # (H, W, 3) float in [0, 1]
    mask: np.ndarray | None = None  # (H, W, 1) float in [0, 1]
    feed: np.ndarray | None = None  # (H, W) uint8

    def apply(self, image: np.ndarray) -> np.ndarray:
        size = (self.raw if self.raw is not None else self.feed).shape[:2]
        if image.shape[:2] != size:
            return image  # sd-webui-controlnet logs a resolution mismatch and leaves the image
        if self.kind == "inpaint_only":
            return (self.mask * image.clip(0, 1) + (1 - self.mask) * self.raw).clip(0, 1)
        pixels = (image * 255).clip(0, 255).astype(np.uint8)
        space, back, channel = ((cv2.COLOR_RGB2LAB, cv2.COLOR_LAB2RGB, 0) if self.kind == "recolor_luminance"
                                else (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2))
        converted = cv2.cvtColor(pixels, space)
        converted[:, :, channel] = self.feed
        return (cv2.cvtColor(converted, back).astype(np.float32) / 255.0).clip(0, 1)


def inpaint_pixel_post(hint: np.ndarray) -> PixelPost:
    """From the RGBA control map at the final size: the mask dilated and box-blurred by 7 px."""
    sigma = INPAINT_BLUR_SIGMA
    mask = (hint[:, :, 3].astype(np.float32) / 255.0)
    mask = cv2.dilate(mask, np.ones((sigma, sigma), dtype=np.uint8))
    mask = cv2.blur(mask, (sigma, sigma))[:, :, None]
    return PixelPost("inpaint_only", raw=hint[:, :, :3].astype(np.float32) / 255.0, mask=mask)


def recolor_pixel_post(kind: str, hint: np.ndarray) -> PixelPost:
    return PixelPost(kind, feed=hint[:, :, 0].copy())
