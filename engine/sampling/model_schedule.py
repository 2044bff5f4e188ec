"""The checkpoint's discrete noise levels as A1111 sees them (k-diffusion `DiscreteSchedule`, A1111's LCM)."""

import torch

from engine.errors import UnsupportedError, choices


BETA_SCHEDULES = ("scaled_linear", "linear")


def alphas_cumprod_from_config(config: dict) -> torch.Tensor:
    """ᾱ_t for t = 0..N-1 from a diffusers scheduler config, computed as A1111 does.

    A1111 (ldm `register_schedule`, sgm `LegacyDDPMDiscretization`) builds the betas and their cumulative
    product in float64 and stores the result as float32; diffusers works in float32, which moves sigmas by
    ~1e-6. diffusers' "scaled_linear" is ldm's "linear" (a linspace of square roots, squared).
    """
    steps = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        betas = torch.as_tensor(config["trained_betas"], dtype=torch.float64)
    else:
        schedule = config.get("beta_schedule", "scaled_linear")
        start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
        if schedule == "scaled_linear":
            betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
        elif schedule == "linear":
            betas = torch.linspace(start, end, steps, dtype=torch.float64)
        else:
            raise UnsupportedError("scheduler_config", f"beta_schedule {schedule!r} is not supported; "
                                                      f"supported: {choices(BETA_SCHEDULES)}")
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


class DiscreteSigmas:
    """The model's N noise levels σ_t = sqrt((1 - ᾱ_t) / ᾱ_t), ascending in t, with A1111's σ <-> t maps.

    Mirrors k-diffusion `DiscreteSchedule` with quantisation off (A1111's default): t is fractional and log σ
    is interpolated linearly between neighbouring integer timesteps. All values are float32 like A1111's.
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.alphas_cumprod = alphas_cumprod.to(torch.float32)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of a noise level (σ = 0 maps to t = 0)."""
        log_sigma = sigma.log()
        distances = log_sigma - self.log_sigmas[:, None]
        low_index = distances.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_index = low_index + 1
        low, high = self.log_sigmas[low_index], self.log_sigmas[high_index]
        weight = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - weight) * low_index + weight * high_index).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level at a (fractional) timestep, interpolating log σ."""
        t = t.float()
        low_index, high_index, weight = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - weight) * self.log_sigmas[low_index] + weight * self.log_sigmas[high_index]).exp()

    def model_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The timestep the UNet is given at noise level σ."""
        return self.sigma_to_t(sigma)

    def uniform_timesteps(self, n: int) -> torch.Tensor:
        """The n timesteps of A1111's "Uniform"/automatic schedule: linspace(N - 1, 0, n)."""
        return torch.linspace(len(self.sigmas) - 1, 0, n)


class LcmSigmas(DiscreteSigmas):
    """A1111's `LCMCompVisDenoiser` schedule: the 50 noise levels of t = 19, 39, ..., 999.

    Timesteps are quantised to those 50 (the UNet always sees one of them), and its "Uniform" schedule spaces
    timesteps evenly between 999 and 19.
    """

    ORIGINAL_STEPS = 50

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.skip = len(alphas_cumprod) // self.ORIGINAL_STEPS
        valid = alphas_cumprod.to(torch.float32)[self.skip - 1::self.skip]
        super().__init__(valid)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        distances = sigma.log() - self.log_sigmas[:, None]
        return distances.abs().argmin(dim=0).view(sigma.shape) * self.skip + (self.skip - 1)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        index = ((t - (self.skip - 1)) / self.skip).float().clamp(min=0, max=len(self.sigmas) - 1)
        return super().t_to_sigma(index)

    def uniform_timesteps(self, n: int) -> torch.Tensor:
        start = self.sigma_to_t(torch.tensor(self.sigma_max))
        end = self.sigma_to_t(torch.tensor(self.sigma_min))
        return torch.linspace(start, end, n)
