"""A1111's schedule types (`modules/sd_schedulers.py`): n descending float32 sigmas plus a final 0."""

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.sampling.model_schedule import DiscreteSigmas


# Align Your Steps, NVIDIA's published 10-step sigmas (A1111 uses the SDXL row for SDXL, the SD1.5 row
# otherwise).
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def uniform(n: int, model: DiscreteSigmas) -> torch.Tensor:
    """The model's own schedule (A1111 "Uniform" and the automatic default): evenly spaced timesteps from N-1
    to 0, log σ interpolated between integer timesteps (k-diffusion `DiscreteSchedule.get_sigmas`)."""
    return _append_zero(model.t_to_sigma(model.uniform_timesteps(n)))


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in σ^(1/ρ)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log σ."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """log σ follows a power ρ of a linear ramp (ρ = 1 is the exponential schedule)."""
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def sgm_uniform(n: int, sigma_min: float, sigma_max: float, model: DiscreteSigmas) -> torch.Tensor:
    """n timesteps evenly spaced from t(σmax) towards t(σmin), endpoint excluded (SGM's discretisation)."""
    start, end = model.sigma_to_t(torch.tensor(sigma_max)), model.sigma_to_t(torch.tensor(sigma_min))
    return _append_zero(model.t_to_sigma(torch.linspace(start, end, n + 1)[:-1]))


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in arctan σ. A1111's version returns n + 1 values ending at σmin, not 0: its last step
    stops at σmin, and that is kept."""
    alpha_min, alpha_max = torch.arctan(torch.tensor(sigma_min)), torch.arctan(torch.tensor(sigma_max))
    fraction = torch.arange(n + 1) / n
    return torch.tan(fraction * alpha_min + (1.0 - fraction) * alpha_max)


def align_your_steps(n: int, sdxl: bool) -> torch.Tensor:
    """NVIDIA's Align Your Steps sigmas; other step counts interpolate log σ (float64, like A1111's numpy)."""
    base = np.array(AYS_SDXL if sdxl else AYS_SD15)
    if n != len(base):
        positions = np.linspace(0, 1, len(base))
        log_sigmas = np.interp(np.linspace(0, 1, n), positions, np.log(base[::-1]))
        base = np.exp(log_sigmas)[::-1]
    return torch.tensor(np.append(base, 0.0), dtype=torch.float32)


def simple(n: int, model: DiscreteSigmas) -> torch.Tensor:
    """n of the model's sigmas taken at an even stride from the top (ComfyUI's "simple")."""
    stride = len(model.sigmas) / n
    picked = [float(model.sigmas[-(1 + int(i * stride))]) for i in range(n)]
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


def normal(n: int, sigma_min: float, sigma_max: float, model: DiscreteSigmas) -> torch.Tensor:
    """n timesteps evenly spaced from t(σmax) to t(σmin), both included."""
    start, end = model.sigma_to_t(torch.tensor(sigma_max)), model.sigma_to_t(torch.tensor(sigma_min))
    return _append_zero(model.t_to_sigma(torch.linspace(start, end, n)))


def ddim(n: int, model: DiscreteSigmas) -> torch.Tensor:
    """The model's sigmas at timesteps 1, 1 + k, 1 + 2k, ... (k = N // n), highest first. When k does not
    divide N this yields more than n sigmas, and A1111 then runs that many steps."""
    stride = max(len(model.sigmas) // n, 1)
    picked = [float(model.sigmas[i]) for i in range(1, len(model.sigmas), stride)]
    return torch.tensor([*picked[::-1], 0.0], dtype=torch.float32)


def beta(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Lee et al. (2024), "Beta Sampling is All You Need": σ at Beta(α, β) quantiles, linear in σ."""
    from scipy import stats  # only this schedule needs scipy

    quantiles = [stats.beta.ppf(x, alpha, beta_) for x in 1 - np.linspace(0, 1, n)]
    sigmas = [sigma_min + q * (sigma_max - sigma_min) for q in quantiles]
    return torch.tensor([*sigmas, 0.0], dtype=torch.float32)


@dataclass(frozen=True)
class ScheduleOptions:
    """A1111 options that reshape sigma schedules (all default to "off", as in A1111)."""

    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    use_old_karras_scheduler_sigmas: bool = False
    beta_dist_alpha: float = 0.6
    beta_dist_beta: float = 0.6
    sdxl: bool = False


def schedule_sigmas(schedule: str, n: int, model: DiscreteSigmas, options: ScheduleOptions,
                    default_rho: float = -1.0) -> torch.Tensor:
    """The sigmas of schedule type `schedule` (a name from `engine.samplers.SCHEDULES`) for n steps.

    As A1111 `KDiffusionSampler.get_sigmas`: σmin/σmax are the model's unless overridden (or 0.1/10 with the
    old Karras option), and a non-zero `rho` replaces a schedule's default ρ. "automatic" means the model's
    own uniform schedule, used by samplers without a default schedule.
    """
    sigma_min, sigma_max = (0.1, 10.0) if options.use_old_karras_scheduler_sigmas else (model.sigma_min,
                                                                                           model.sigma_max)
    if options.sigma_min != 0 and options.sigma_min != model.sigma_min:
        sigma_min = options.sigma_min
    if options.sigma_max != 0 and options.sigma_max != model.sigma_max:
        sigma_max = options.sigma_max
    rho = options.rho if default_rho != -1 and options.rho != 0 else default_rho
    builders = {
        "automatic": lambda: uniform(n, model),
        "uniform": lambda: uniform(n, model),
        "karras": lambda: karras(n, sigma_min, sigma_max, rho),
        "exponential": lambda: exponential(n, sigma_min, sigma_max),
        "polyexponential": lambda: polyexponential(n, sigma_min, sigma_max, rho),
        "sgm_uniform": lambda: sgm_uniform(n, sigma_min, sigma_max, model),
        "kl_optimal": lambda: kl_optimal(n, sigma_min, sigma_max),
        "align_your_steps": lambda: align_your_steps(n, options.sdxl),
        "simple": lambda: simple(n, model),
        "normal": lambda: normal(n, sigma_min, sigma_max, model),
        "ddim": lambda: ddim(n, model),
        "beta": lambda: beta(n, sigma_min, sigma_max, options.beta_dist_alpha, options.beta_dist_beta),
    }
    return builders[schedule]()
