"""VAE decode/encode in overlapping tiles above a size, so large images fit in memory, without touching the
shared VAE: diffusers' `enable_tiling()` would switch tiling on for every request using that VAE.

Tiles are laid out along each axis like A1111's upscaler grid (evenly spread, the last flush with the edge)
and blended with linear ramps across each shared band, normalised so the weights sum to one everywhere.
Tiled output is close to, not equal to, a whole-image pass: each tile has its own GroupNorm statistics and
mid-block attention. Torch is imported only when a VAE actually runs.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np


if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL

# Peak decode activations per output pixel, in elements of the VAE's dtype per channel of its widest
# (full-resolution) block: a few 128-channel tensors live at once in the last up block. Measured on the
# SD/SDXL VAE (block_out_channels[0] = 128) with the live-tensor simulation: ≈ 1.5 KB/px in fp16.
DECODE_ELEMENTS_PER_PIXEL_PER_CHANNEL = 6
# Leave this share of free device memory for everything else running at the same time.
FREE_MEMORY_MARGIN = 0.8


@dataclass(frozen=True)
class VaeTiling:
    """When and how to run the VAE in tiles.

    Attributes:
        above_pixels: tile images of more than this many pixels (width × height). None: tile only when a
            whole-image decode would not fit in the free memory of a CUDA device (never on CPU). 0: always.
        tile_size: tile side in image pixels; a multiple of the VAE's scale factor (8).
        overlap: pixels neighbouring tiles share at least; a multiple of 8, smaller than `tile_size`.
    """

    above_pixels: int | None = None
    tile_size: int = 1024
    overlap: int = 256

    def __post_init__(self):
        if self.tile_size % 8 or self.overlap % 8 or not 0 <= self.overlap < self.tile_size:
            raise ValueError(f"VAE tiles need multiples of 8 with overlap < tile size, got {self.tile_size}/{self.overlap}")


def decode(vae: "AutoencoderKL", latents: "torch.Tensor", tiling: VaeTiling) -> "torch.Tensor":
    """`vae.decode(latents).sample`, in tiles when `tiling` says so.

    Args:
        vae: the (shared) VAE; it is only read.
        latents: (B, C, h, w), already divided by the VAE's scaling factor.
        tiling: when and how to tile.

    Returns:
        Images (B, 3, h·f, w·f) in [-1, 1] (not clamped), in the VAE's dtype.
    """
    factor = _scale_factor(vae)
    latents = latents.to(vae.dtype)
    height, width = latents.shape[-2] * factor, latents.shape[-1] * factor
    if not _tiles_needed(vae, tiling, width, height, latents.shape[0]):
        return vae.decode(latents, return_dict=False)[0]
    return _run_tiled(lambda tile: _decode_tile(vae, tile), latents, tiling, factor, up=True)


def encode(vae: "AutoencoderKL", images: "torch.Tensor", tiling: VaeTiling) -> Any:
    """`vae.encode(images).latent_dist`, in tiles when `tiling` says so.

    Args:
        vae: the (shared) VAE; it is only read.
        images: (B, 3, H, W) in [-1, 1], H and W multiples of the VAE's scale factor.
        tiling: when and how to tile.

    Returns:
        The posterior (`DiagonalGaussianDistribution`); sampling it, or taking its mean, is the caller's.
    """
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    images = images.to(vae.dtype)
    height, width = images.shape[-2:]
    if not _tiles_needed(vae, tiling, width, height, images.shape[0]):
        return vae.encode(images, return_dict=False)[0]
    moments = _run_tiled(lambda tile: _encode_tile(vae, tile), images, tiling, _scale_factor(vae), up=False)
    return DiagonalGaussianDistribution(moments)


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) of each tile along an axis of `length`: evenly spread, neighbours sharing ≥ `overlap`,
    the first at 0 and the last ending at `length`; one span of the whole axis when it fits in a tile."""
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    spacing = (length - tile) / (count - 1)
    return [(round(index * spacing), round(index * spacing) + tile) for index in range(count)]


def blend_weights(spans: list[tuple[int, int]], index: int) -> np.ndarray:
    """Weights of tile `index` along its span: linear ramps across the bands it shares with its neighbours
    (rising from its start, falling to its end), 1 elsewhere; always > 0."""
    start, end = spans[index]
    positions = np.arange(start, end) + 0.5
    weights = np.ones(end - start)
    if index > 0 and spans[index - 1][1] > start:
        weights = np.minimum(weights, (positions - start) / (spans[index - 1][1] - start))
    if index < len(spans) - 1 and spans[index + 1][0] < end:
        weights = np.minimum(weights, (end - positions) / (end - spans[index + 1][0]))
    return weights


def _run_tiled(run: Callable[["torch.Tensor"], "torch.Tensor"], source: "torch.Tensor", tiling: VaeTiling,
               factor: int, up: bool) -> "torch.Tensor":
    """Run `run` over tiles of `source` and blend the outputs. The layout is in latent units, so tiles line
    up exactly: `up` (decode) maps a latent span s to pixels s·factor, else (encode) pixels to latents."""
    import torch

    in_scale, out_scale = (1, factor) if up else (factor, 1)
    latent_h, latent_w = (size // in_scale for size in source.shape[-2:])
    rows = tile_spans(latent_h, tiling.tile_size // factor, tiling.overlap // factor)
    cols = tile_spans(latent_w, tiling.tile_size // factor, tiling.overlap // factor)
    total = weight_sum = None
    for row, (top, bottom) in enumerate(rows):
        row_weights = np.repeat(blend_weights(rows, row), out_scale)
        for col, (left, right) in enumerate(cols):
            piece = run(source[..., top * in_scale:bottom * in_scale, left * in_scale:right * in_scale]).float()
            if total is None:
                shape = (*piece.shape[:2], latent_h * out_scale, latent_w * out_scale)
                total = torch.zeros(shape, device=piece.device)
                weight_sum = torch.zeros(shape[-2:], device=piece.device)
            weights = np.outer(row_weights, np.repeat(blend_weights(cols, col), out_scale))
            weights = torch.from_numpy(weights.astype(np.float32)).to(piece.device)
            window = (..., slice(top * out_scale, bottom * out_scale), slice(left * out_scale, right * out_scale))
            total[window] += piece * weights
            weight_sum[window[1:]] += weights
    return (total / weight_sum).to(source.dtype)


def _decode_tile(vae: "AutoencoderKL", latents: "torch.Tensor") -> "torch.Tensor":
    # What `AutoencoderKL._decode` does for one untiled input.
    if vae.post_quant_conv is not None:
        latents = vae.post_quant_conv(latents)
    return vae.decoder(latents)


def _encode_tile(vae: "AutoencoderKL", images: "torch.Tensor") -> "torch.Tensor":
    # What `AutoencoderKL._encode` does for one untiled input: the posterior's (mean, logvar) moments.
    moments = vae.encoder(images)
    return vae.quant_conv(moments) if vae.quant_conv is not None else moments


def _scale_factor(vae: "AutoencoderKL") -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _tiles_needed(vae: "AutoencoderKL", tiling: VaeTiling, width: int, height: int, batch: int) -> bool:
    if tiling.above_pixels is not None:
        return width * height > tiling.above_pixels
    device = vae.device
    if device.type != "cuda":
        return False
    import torch

    free_bytes, _ = torch.cuda.mem_get_info(device)
    element_size = torch.tensor([], dtype=vae.dtype).element_size()
    per_pixel = DECODE_ELEMENTS_PER_PIXEL_PER_CHANNEL * vae.config.block_out_channels[0] * element_size
    return batch * width * height * per_pixel > free_bytes * FREE_MEMORY_MARGIN
