"""A1111's LCM sampler (`modules/sd_samplers_lcm.py`): its 50-level denoiser with LCM boundary scaling."""

import torch

from engine.errors import UnsupportedError
from engine.sampling.denoisers import SigmaSpace
from engine.sampling.model_schedule import LcmSigmas


class LcmSpace(SigmaSpace):
    """A1111 `LCMCompVisDenoiser`: the UNet sees one of 50 timesteps; the ε-denoised latent is then mixed with
    the input by LCM's consistency boundary condition (σ_data 0.5, timestep scaled by 10), applied in
    k-diffusion's x = x0 + σ·noise coordinates as A1111 does."""

    SIGMA_DATA = 0.5
    TIMESTEP_SCALING = 10.0

    def __init__(self, model: LcmSigmas, prediction_type: str = "epsilon"):
        if prediction_type != "epsilon":
            raise UnsupportedError("sampler_name",
                                   "A1111's LCM sampler supports epsilon-prediction models only")
        super().__init__(model, prediction_type)

    def prediction(self, x: torch.Tensor, sigma: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        denoised = super().prediction(x, sigma, model_output)
        scaled_t = self.model.sigma_to_t(sigma) * self.TIMESTEP_SCALING
        c_skip = self.SIGMA_DATA**2 / (scaled_t**2 + self.SIGMA_DATA**2)
        c_out = scaled_t / (scaled_t**2 + self.SIGMA_DATA**2) ** 0.5
        return c_out * denoised + c_skip * x


def lcm(x, sigmas, noise, params):
    """Jump to the denoised latent, then re-noise it to the next sigma with fresh per-image noise."""
    for i in range(len(sigmas) - 1):
        x, denoised = yield x, sigmas[i]
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise(x, sigmas[i], sigmas[i + 1])
    return x
