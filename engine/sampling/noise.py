"""A1111's per-image noise (`modules/rng.py ImageRNG`): seeds, variation seeds, seed resize, ENSD."""

import logging
from collections.abc import Sequence

import torch

from engine.errors import UnsupportedError, choices
from engine.sampling.transfer import to_device


logger = logging.getLogger(__name__)

# A1111 assumes an 8x VAE when it turns "seed resize from" pixel sizes into latent sizes.
LATENT_FACTOR = 8

# opts.randn_source: where the Gaussian draws are made. "NV" (A1111's numpy Philox port of CUDA's generator)
# is not implemented.
RANDN_SOURCES = ("GPU", "CPU")


def generator_device(device: torch.device | str, source: str) -> torch.device:
    """The device whose generator makes the draws: the CUDA device for source "GPU" on CUDA, else the CPU.

    A1111 `rng.create_generator`: "CPU" (and Apple mps) always draw on the CPU and move the result.
    """
    if source not in RANDN_SOURCES:
        raise UnsupportedError("randn_source",
                               f"unknown RNG source {source!r}; supported: {choices(RANDN_SOURCES)}")
    device = torch.device(device)
    return device if source == "GPU" and device.type == "cuda" else torch.device("cpu")


def make_generator(seed: int, device: torch.device | str, source: str) -> torch.Generator:
    """A fresh generator seeded like A1111 `torch.Generator(device).manual_seed(int(seed))`."""
    return torch.Generator(generator_device(device, source)).manual_seed(int(seed))


def randn(shape: Sequence[int], generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """One float32 draw of `shape` from `generator` (on the generator's device), moved to `device`."""
    drawn = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return to_device(drawn, device)


def randn_per_image(generators: Sequence[torch.Generator], shape: Sequence[int],
                    device: torch.device | str) -> torch.Tensor:
    """Stack one (C, H, W) draw per image generator into (B, C, H, W) on `device`.

    This is A1111's `ImageRNG.next()`, which k-diffusion's `randn_like` is redirected to for ancestral and
    churn noise: every image draws from its own generator, so a batch matches the same images made one by
    one.
    """
    return torch.stack([randn(shape, generator, device) for generator in generators])


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111 `rng.slerp` for variation seeds, quirks included.

    The norms and dot product run along dim 1 of a (C, H, W) tensor (the rows), so the interpolation angle
    varies per channel and column; and the near-parallel fallback weights `low` by `strength` (the opposite of
    the slerp branch). Both are what A1111 computes, so both are kept.
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * strength + high * (1 - strength)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    low_weight = (torch.sin((1.0 - strength) * omega) / sin_omega).unsqueeze(1)
    high_weight = (torch.sin(strength * omega) / sin_omega).unsqueeze(1)
    return low_weight * low + high_weight * high


def paste_centred(target: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """Copy `patch` (C, h, w) into the centre of `target` (C, H, W), cropping it centred when it is larger.

    A1111 "seed resize from": the noise of the old size keeps its place in the middle of the new canvas.
    """
    dx = (target.shape[2] - patch.shape[2]) // 2
    dy = (target.shape[1] - patch.shape[1]) // 2
    width = patch.shape[2] if dx >= 0 else patch.shape[2] + 2 * dx
    height = patch.shape[1] if dy >= 0 else patch.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    target[:, ty:ty + height, tx:tx + width] = patch[:, sy:sy + height, sx:sx + width]
    return target


class ImageNoise:
    """Initial latent noise and the per-image generators for the sampler's later noise, as A1111 makes them.

    Args:
        shape: latent shape (C, H, W) of one image.
        seeds: one seed per image in the batch (A1111 `seed + i`, or all equal when a variation strength is
            set).
        subseeds: variation seeds; missing entries count as 0 (A1111).
        subseed_strength: 0 = plain seed noise, 1 = pure variation-seed noise (slerp in between).
        seed_resize_from: (width, height) in pixels of the image the seed was found at; (0, 0) = off.
        device: where the noise is returned.
        source: "GPU" (draw with a generator on the CUDA device when `device` is CUDA) or "CPU".
        ensd: eta noise seed delta; when non-zero the generators are re-seeded with `seed + ensd` after
            `first()`.
    """

    def __init__(self, shape: Sequence[int], seeds: Sequence[int], subseeds: Sequence[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from: tuple[int, int] = (0, 0),
                 device: torch.device | str = "cpu", source: str = "GPU", ensd: int = 0):
        self.shape = tuple(int(n) for n in shape)
        self.seeds = [int(seed) for seed in seeds]
        self.subseeds = None if subseeds is None else [int(seed) for seed in subseeds]
        self.subseed_strength = float(subseed_strength)
        self.seed_resize_from = seed_resize_from
        self.device = torch.device(device)
        self.source = source
        self.ensd = int(ensd or 0)
        self.generators = [make_generator(seed, self.device, source) for seed in self.seeds]

    def _resized_shape(self) -> tuple[int, int, int]:
        width, height = self.seed_resize_from
        if width <= 0 or height <= 0:
            return self.shape
        return (self.shape[0], height // LATENT_FACTOR, width // LATENT_FACTOR)

    def _fresh_draw(self, seed: int, shape: Sequence[int]) -> torch.Tensor:
        # A1111 draws these from the global RNG right after `torch.manual_seed(seed)`: the same numbers as a
        # fresh generator with that seed, without touching global state here.
        return randn(shape, make_generator(seed, self.device, self.source), self.device)

    def _image_noise(self, index: int, seed: int, generator: torch.Generator) -> torch.Tensor:
        noise_shape = self._resized_shape()
        resized = noise_shape != self.shape
        noise = self._fresh_draw(seed, noise_shape) if resized else randn(self.shape, generator, self.device)
        if self.subseeds is not None and self.subseed_strength != 0:
            subseed = self.subseeds[index] if index < len(self.subseeds) else 0
            noise = slerp(self.subseed_strength, noise, self._fresh_draw(subseed, noise_shape))
        if resized:
            # The image's own generator still makes one full-size draw, so its later noise is unchanged.
            noise = paste_centred(randn(self.shape, generator, self.device), noise)
        return noise

    def first(self) -> torch.Tensor:
        """The initial noise, (B, C, H, W) float32 on `device` (not yet scaled by the first sigma)."""
        noise = torch.stack([
            self._image_noise(index, seed, generator)
            for index, (seed, generator) in enumerate(zip(self.seeds, self.generators, strict=True))
        ])
        if self.ensd:
            # A1111 `ImageRNG.first`: ancestral/churn noise then comes from seed + ENSD generators.
            self.generators = [make_generator(seed + self.ensd, self.device, self.source)
                               for seed in self.seeds]
        logger.debug("initial noise for seeds %s, shape %s", self.seeds, tuple(noise.shape))
        return noise

    def next(self) -> torch.Tensor:
        """The sampler's next noise draw, one per image (A1111 `ImageRNG.next` after the first call)."""
        return randn_per_image(self.generators, self.shape, self.device)


class GeneratorNoise:
    """The sampler-side noise source for ancestral steps, churn and eta: one fresh draw per image per call.

    A1111 replaces k-diffusion's `torch.randn_like` with `ImageRNG.next()`, so these draws continue the image
    generators that made the initial noise (or their seed + ENSD replacements). Signature of a k-diffusion
    `noise_sampler`, plus the latent whose shape, device and dtype the draw takes.
    """

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)

    def __call__(self, x: torch.Tensor, sigma=None, sigma_next=None) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} image generators for a batch of {x.shape[0]}")
        return randn_per_image(self.generators, x.shape[1:], x.device).to(x.dtype)


def zero_noise(x: torch.Tensor, sigma=None, sigma_next=None) -> torch.Tensor:
    """A noise source that adds nothing, for planning a run without consuming any generator."""
    return torch.zeros_like(x)
