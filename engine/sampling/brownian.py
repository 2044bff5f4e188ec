"""Brownian-tree noise for the SDE samplers: one tree per image, seeded with that image's seed as in A1111."""

import torch
import torchsde

from engine.sampling.noise import generator_device
from engine.sampling.transfer import to_device


class BrownianNoise:
    """k-diffusion's `BrownianTreeNoiseSampler` over a batch with per-image seeds.

    A1111 (`Sampler.create_noise_sampler`) seeds one `torchsde.BrownianTree` per image with the plain image
    seed (no ENSD) over the full schedule's [smallest positive σ, largest σ], also in img2img/hires where only
    the tail of that schedule runs. The increment between two sigmas is returned normalised to unit variance.

    A1111 makes torchsde draw with its RNG-source generator; building the trees on that generator's device
    (the CPU for randn_source "CPU") gives the same draws, and the result is moved to the latent's device.
    """

    def __init__(self, sigma_min: torch.Tensor, sigma_max: torch.Tensor, seeds: list[int],
                 device: torch.device | str, source: str):
        self.sigma_min = torch.as_tensor(sigma_min)
        self.sigma_max = torch.as_tensor(sigma_max)
        self.seeds = [int(seed) for seed in seeds]
        self.tree_device = generator_device(device, source)
        self._trees = None

    def _build(self, image_shape: torch.Size) -> None:
        if len(self.seeds) == 0:
            raise ValueError("Brownian noise needs one seed per image")
        w0 = torch.zeros(image_shape, dtype=torch.float32, device=self.tree_device)
        self._trees = [torchsde.BrownianTree(self.sigma_min, w0, self.sigma_max, entropy=seed)
                       for seed in self.seeds]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        if self._trees is None:
            self._build(x.shape[1:])
        if x.shape[0] != len(self._trees):
            raise ValueError(f"Brownian noise has {len(self._trees)} seeds for a batch of {x.shape[0]}")
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        low, high, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        increments = torch.stack([tree(low, high) for tree in self._trees]) * sign
        return to_device(increments / (t1 - t0).abs().sqrt(), x.device).to(x.dtype)
