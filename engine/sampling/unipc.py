"""UniPC (Zhao et al. 2023) the way A1111 runs it (`modules/models/diffusion/uni_pc`): multistep, data
prediction, B(h) variants, on the discrete model's continuous-time VP schedule.

A1111 maps UNet timestep k to continuous time (k + 1) / N and interpolates log sqrt(ᾱ) linearly in between;
the UNet is given (t - 1/N)·1000. diffusers' UniPCMultistepScheduler rounds to integer timesteps and
interpolates differently, so it is not used. Generator protocol of `engine.sampling.stepper`, levels are UNet
timesteps.
"""

import torch

from engine.errors import RequestError, UnsupportedError
from engine.sampling.transfer import to_device


class VpSchedule:
    """A1111 `NoiseScheduleVP('discrete')`: log α(t) piecewise linear over t_k = (k + 1) / N."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.total_steps = len(alphas_cumprod)
        self.t_knots = torch.linspace(0.0, 1.0, self.total_steps + 1)[1:]
        self.log_alpha_knots = 0.5 * torch.log(alphas_cumprod)

    @staticmethod
    def _interpolate(x: torch.Tensor, xp: torch.Tensor, yp: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear interpolation through (xp, yp), xp increasing, extended linearly past the ends."""
        index = torch.searchsorted(xp, x.reshape(-1).contiguous()).clamp(1, len(xp) - 1)
        x0, x1, y0, y1 = xp[index - 1], xp[index], yp[index - 1], yp[index]
        return (y0 + (x.reshape(-1) - x0) * (y1 - y0) / (x1 - x0)).reshape(x.shape)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self._interpolate(t, self.t_knots, self.log_alpha_knots)

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def std(self, t):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def half_log_snr(self, t):
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))

    def time_of_half_log_snr(self, lamb: torch.Tensor) -> torch.Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros(1), -2.0 * lamb)
        return self._interpolate(log_alpha, self.log_alpha_knots.flip(0), self.t_knots.flip(0))

    def model_time(self, t):
        """The UNet timestep for continuous time t."""
        return (t - 1.0 / self.total_steps) * 1000.0


def _time_steps(schedule: VpSchedule, skip_type: str, t_start, t_end: float, steps: int) -> torch.Tensor:
    if skip_type == "time_uniform":
        return torch.linspace(t_start, t_end, steps + 1)
    if skip_type == "time_quadratic":
        return torch.linspace(t_start**0.5, t_end**0.5, steps + 1).pow(2)
    if skip_type == "logSNR":
        lambda_start = schedule.half_log_snr(torch.as_tensor(t_start)).item()
        lambda_end = schedule.half_log_snr(torch.as_tensor(t_end)).item()
        return schedule.time_of_half_log_snr(torch.linspace(lambda_start, lambda_end, steps + 1))
    raise UnsupportedError("uni_pc_skip_type", f"unknown skip type {skip_type!r}; "
                                               "supported: 'time_uniform', 'time_quadratic', 'logSNR'")


def _data_prediction(schedule: VpSchedule, x, t, eps):
    return (x - schedule.std(t) * eps) / schedule.alpha(t)


def _coefficients(h: torch.Tensor, rks: torch.Tensor, order: int, variant: str):
    """B(h) and the right-hand side b of UniPC's order conditions, plus the matrix R of powers of r_k."""
    hh = -h
    h_phi_k = torch.expm1(hh) / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    factorial, rows, rhs = 1, [], []
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return b_h, torch.stack(rows), torch.tensor(rhs)


def _update(schedule, x, models, times, t, order, variant, use_corrector):
    """One UniPC step from times[-1] to t: predictor, then corrector using the model at the prediction.

    Yields the predicted latent for evaluation when correcting; returns (x at t, data prediction there or
    None).
    """
    t_prev = times[-1]
    model_prev = models[-1]
    lambda_prev = schedule.half_log_snr(t_prev)
    h = schedule.half_log_snr(t) - lambda_prev
    rks, d1s = [], []
    for i in range(1, order):
        rk = (schedule.half_log_snr(times[-(i + 1)]) - lambda_prev) / h
        rks.append(rk)
        d1s.append((models[-(i + 1)] - model_prev) / rk)
    rks = torch.tensor([*[rk.item() for rk in rks], 1.0])
    b_h, powers, rhs = _coefficients(h, rks, order, variant)
    alpha_t = schedule.alpha(t)
    x_base = schedule.std(t) / schedule.std(t_prev) * x - alpha_t * torch.expm1(-h) * model_prev

    x_t = x_base
    differences = torch.stack(d1s, dim=1) if d1s else None
    if differences is not None:
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(powers[:-1, :-1], rhs[:-1])
        rhos_p = to_device(rhos_p, x.device)
        x_t = x_base - alpha_t * b_h * torch.einsum("k,bkchw->bchw", rhos_p, differences)
    if not use_corrector:
        return x_t, None

    rhos_c = to_device(torch.tensor([0.5]) if order == 1 else torch.linalg.solve(powers, rhs), x.device)
    x_seen, eps = yield x_t, schedule.model_time(t)
    model_t = _data_prediction(schedule, x_seen, t, eps)
    correction = 0 if differences is None else torch.einsum("k,bkchw->bchw", rhos_c[:-1], differences)
    return x_base - alpha_t * b_h * (correction + rhos_c[-1] * (model_t - model_prev)), model_t


def unipc(x, timesteps, noise, params, alphas_cumprod, variant="bh1", skip_type="time_uniform", order=3,
          lower_order_final=True, img2img=False):
    """A1111 `sd_samplers_timesteps_impl.unipc`: len(timesteps) UniPC steps from t = 1 (img2img: just above
    the last given timestep) to t = 1/N. The final step skips the corrector: one evaluation per step."""
    if variant not in ("bh1", "bh2"):
        raise UnsupportedError("uni_pc_variant",
                               f"unknown UniPC variant {variant!r}; supported: 'bh1', 'bh2'")
    schedule = VpSchedule(alphas_cumprod)
    steps = len(timesteps)
    if steps < order:
        raise RequestError("steps", f"UniPC of order {order} needs at least {order} steps, got {steps}")
    t_start = timesteps[-1] / 1000 + 1 / 1000 if img2img else 1.0
    times_all = _time_steps(schedule, skip_type, t_start, 1.0 / schedule.total_steps, steps)

    x, eps = yield x, schedule.model_time(times_all[0])
    models, times = [_data_prediction(schedule, x, times_all[0], eps)], [times_all[0]]
    for step in range(1, steps + 1):
        t = times_all[step]
        step_order = min(order, steps + 1 - step) if lower_order_final and step >= order else min(step, order)
        x, model_x = yield from _update(schedule, x, models, times, t, step_order, variant, step < steps)
        if step < steps:
            models, times = [*models, model_x][-order:], [*times, t][-order:]
    return x
