"""How A1111 wraps the UNet for each sampler family: timestep, input scaling and output conversion per level.

These are the `Space` objects of `engine.sampling.stepper`: k-diffusion's `CompVisDenoiser`/`CompVisVDenoiser`
for sigma-schedule samplers, and A1111's `CompVisTimestepsDenoiser` for DDIM/PLMS/UniPC.
"""

import torch

from engine.errors import UnsupportedError, choices
from engine.sampling.model_schedule import DiscreteSigmas


PREDICTION_TYPES = ("epsilon", "v_prediction")


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise UnsupportedError("scheduler_config", f"prediction_type {prediction_type!r} is not supported; "
                                                  f"supported: {choices(PREDICTION_TYPES)}")
    return prediction_type


class SigmaSpace:
    """k-diffusion's discrete DDPM denoiser: levels are sigmas, the latent is x = x0 + σ·noise.

    The UNet sees x / sqrt(σ² + 1) at the fractional timestep t(σ); its ε (or v) output becomes the denoised
    latent the k-diffusion samplers consume.
    """

    def __init__(self, model: DiscreteSigmas, prediction_type: str = "epsilon"):
        self.model = model
        self.prediction_type = check_prediction_type(prediction_type)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.model.model_timestep(sigma)

    def nearest_timestep(self, sigma: torch.Tensor) -> int:
        """The index of the model's noise level closest to σ: what A1111's `apply_refiner` reads as the
        timestep (`argmin |inner_model.sigmas − max σ|`; LCM's denoiser holds only its 50 levels)."""
        return int(torch.argmin((self.model.sigmas - torch.as_tensor(sigma).max()).abs()))

    def to_model_input(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x * (1 / (sigma**2 + 1.0) ** 0.5)

    def from_loop(self, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return sample

    def to_loop(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x

    def to_denoised(self, x: torch.Tensor, sigma: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """The clean-latent estimate behind a prediction (here the prediction is already the denoised latent)."""
        return prediction

    def from_denoised(self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        return denoised

    def prediction(self, x: torch.Tensor, sigma: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return x + model_output * -sigma
        c_skip = 1.0 / (sigma**2 + 1.0)
        c_out = -sigma / (sigma**2 + 1.0) ** 0.5
        return model_output * c_out + x * c_skip


class TimestepSpace:
    """A1111's timestep samplers (DDIM, PLMS, UniPC): levels are UNet timesteps and the algorithm works on the
    variance-preserving latent sqrt(ᾱ)·x, which the UNet takes as is. The loop still holds x = x_vp / sqrt(ᾱ)
    (ᾱ interpolated at fractional timesteps), so img2img start points and previews mean the same for every
    sampler. The algorithm consumes ε."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"):
        self.alphas_cumprod = alphas_cumprod
        self.prediction_type = check_prediction_type(prediction_type)

    def scale(self, t: torch.Tensor) -> torch.Tensor:
        """sqrt(ᾱ) at a (fractional) timestep: latent x_vp = scale · x."""
        t = torch.as_tensor(t, dtype=torch.float32)
        low, high, weight = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - weight) * self.alphas_cumprod[low] + weight * self.alphas_cumprod[high]).sqrt()

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(t, dtype=torch.float32)

    def nearest_timestep(self, t: torch.Tensor) -> int:
        """A1111's `apply_refiner` for timestep samplers: the model input time, truncated to an integer."""
        return int(torch.as_tensor(t).max())

    def to_model_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x

    def from_loop(self, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return sample * self.scale(t)

    def to_loop(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x / self.scale(t)

    def to_denoised(self, x: torch.Tensor, t: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """x0 from the VP latent and ε: (x_vp − sqrt(1 − ᾱ)·ε) / sqrt(ᾱ), in the loop's (unscaled) coordinates."""
        alpha = self.scale(t) ** 2
        return (x - (1 - alpha).sqrt() * prediction) / alpha.sqrt()

    def from_denoised(self, x: torch.Tensor, t: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        alpha = self.scale(t) ** 2
        return (x - alpha.sqrt() * denoised) / (1 - alpha).sqrt()

    def prediction(self, x: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return model_output
        # A1111 `CompVisTimestepsVDenoiser`: ε from v, indexing ᾱ at the truncated timestep.
        alpha_cumprod = self.alphas_cumprod[torch.as_tensor(t).to(torch.int64)]
        return alpha_cumprod.sqrt() * model_output + (1 - alpha_cumprod).sqrt() * x
