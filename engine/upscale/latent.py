"""A1111's latent upscale modes (`shared.latent_upscale_modes`): hires fix resizes the latents themselves,
with no decode and no model. Torch is imported only when latents are actually resized."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar


if TYPE_CHECKING:
    import torch

# A1111's latent size is the image size over `opt_f` = 8 (the VAE downsamples three times).
LATENT_SCALE_FACTOR = 8


@dataclass(frozen=True)
class LatentUpscaler:
    """A `torch.nn.functional.interpolate` mode applied to the first-pass latents."""

    kind: ClassVar[str] = "latent"
    name: str
    mode: str
    antialias: bool

    def upscale_latents(
        self, latents: "torch.Tensor", width: int, height: int, scale_factor: int = LATENT_SCALE_FACTOR
    ) -> "torch.Tensor":
        """Resize `latents` (B, C, h, w) to the latent size of a `width` × `height` image.

        As A1111's `sample_hr_pass`: `interpolate(samples, (height // 8, width // 8), mode, antialias)` in the
        latents' own dtype and device. A centre crop for `hr_resize_x` + `hr_resize_y` is the caller's.

        Args:
            latents: first-pass latents, not divided by the VAE scaling factor.
            width: target image width in pixels.
            height: target image height in pixels.
            scale_factor: image pixels per latent pixel.
        """
        from torch.nn import functional

        size = (height // scale_factor, width // scale_factor)
        return functional.interpolate(latents, size=size, mode=self.mode, antialias=self.antialias)


# Name → mode, in A1111's order (also the order `/sdapi/v1/latent-upscale-modes` lists them).
LATENT_UPSCALERS: dict[str, LatentUpscaler] = {
    upscaler.name: upscaler
    for upscaler in (
        LatentUpscaler("Latent", "bilinear", antialias=False),
        LatentUpscaler("Latent (antialiased)", "bilinear", antialias=True),
        LatentUpscaler("Latent (bicubic)", "bicubic", antialias=False),
        LatentUpscaler("Latent (bicubic antialiased)", "bicubic", antialias=True),
        LatentUpscaler("Latent (nearest)", "nearest", antialias=False),
        LatentUpscaler("Latent (nearest-exact)", "nearest-exact", antialias=False),
    )
}
# What A1111 uses when a hires request names no upscaler (`shared.latent_upscale_default_mode`).
DEFAULT_HIRES_UPSCALER = "Latent"


def latent_upscale_mode_list() -> list[dict[str, str]]:
    """`GET /sdapi/v1/latent-upscale-modes`: `[{"name": ...}]` in A1111's order."""
    return [{"name": name} for name in LATENT_UPSCALERS]
