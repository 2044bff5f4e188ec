"""DPM fast and DPM adaptive (DPM-Solver, Lu et al. 2022) as A1111 runs them from k-diffusion.

They ignore the sigma schedule and integrate between σmax and σmin in t = -log σ. A1111 passes eta (default
1), so both run ancestrally, drawing per-image noise after every (accepted) step.
"""

import math

import torch

from engine.sampling.k_euler import SamplerParams, ancestral_step


def _t(sigma):
    return sigma.log().neg()


def _sigma(t):
    return t.neg().exp()


def _eps(cache: dict, key: str, x, t):
    """ε at (x, t), asking the model once per key and step; returns (x the model saw, ε)."""
    if key in cache:
        return x, cache[key]
    x_seen, denoised = yield x, _sigma(t)
    cache[key] = (x_seen - denoised) / _sigma(t)
    return x_seen, cache[key]


def _first_order(x, t, t_next, cache):
    h = t_next - t
    _, eps = yield from _eps(cache, "eps", x, t)
    return x - _sigma(t_next) * h.expm1() * eps


def _second_order(x, t, t_next, cache, r1=1 / 2):
    h = t_next - t
    _, eps = yield from _eps(cache, "eps", x, t)
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    _, eps_r1 = yield from _eps(cache, "eps_r1", u1, s1)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)


def _third_order(x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
    h = t_next - t
    _, eps = yield from _eps(cache, "eps", x, t)
    s1, s2 = t + r1 * h, t + r2 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    _, eps_r1 = yield from _eps(cache, "eps_r1", u1, s1)
    u2 = (x - _sigma(s2) * (r2 * h).expm1() * eps
          - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
    _, eps_r2 = yield from _eps(cache, "eps_r2", u2, s2)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


_ORDERS = {1: _first_order, 2: _second_order, 3: _third_order}


def _ancestral_target(t, t_next, t_end, eta):
    """Where the deterministic part of a step ends, and the noise that makes up the rest (k-diffusion)."""
    if not eta:
        return t_next, 0.0
    sigma_down, _ = ancestral_step(_sigma(t), _sigma(t_next), eta)
    t_down = torch.minimum(t_end, _t(sigma_down))
    return t_down, (_sigma(t_next) ** 2 - _sigma(t_down) ** 2) ** 0.5


def dpm_fast(x, sigma_min, sigma_max, steps: int, noise, params: SamplerParams):
    """Fixed steps evenly spaced in t, third order where possible: exactly `steps` model evaluations."""
    t_start, t_end = _t(torch.as_tensor(sigma_max)), _t(torch.as_tensor(sigma_min))
    intervals = math.floor(steps / 3) + 1
    ts = torch.linspace(t_start, t_end, intervals + 1)
    orders = [3] * (intervals - 2) + [2, 1] if steps % 3 == 0 else [3] * (intervals - 1) + [steps % 3]
    for i, order in enumerate(orders):
        cache = {}
        t, t_next = ts[i], ts[i + 1]
        t_down, sigma_up = _ancestral_target(t, t_next, t_end, params.eta)
        x, _ = yield from _eps(cache, "eps", x, t)
        x = yield from _ORDERS[order](x, t, t_down, cache)
        x = x + sigma_up * params.s_noise * noise(x, _sigma(t), _sigma(t_next))
    return x


class _StepSizeController:
    """k-diffusion's PID step-size controller (defaults: integral only), with its atan limiter."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errors = []

    def propose_step(self, error) -> bool:
        inverse = 1 / (float(error) + self.eps)
        if not self.errors:
            self.errors = [inverse, inverse, inverse]
        self.errors[0] = inverse
        factor = self.errors[0] ** self.b1 * self.errors[1] ** self.b2 * self.errors[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errors[2], self.errors[1] = self.errors[1], self.errors[0]
        self.h *= factor
        return accept


def dpm_adaptive(x, sigma_min, sigma_max, noise, params: SamplerParams, order=3, rtol=0.05, atol=0.0078,
                 h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81):
    """Embedded order-2/3 pairs with error control; the number of model evaluations depends on the latents.

    The error norm runs over the whole batch, so images of one batch influence each other's steps (as in
    A1111).
    """
    t_start, t_end = _t(torch.as_tensor(sigma_max)), _t(torch.as_tensor(sigma_min))
    atol, rtol = torch.tensor(atol), torch.tensor(rtol)
    s, x_prev = t_start, x
    controller = _StepSizeController(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if params.eta else order,
                                     accept_safety)
    while s < t_end - 1e-5:
        cache = {}
        t = torch.minimum(t_end, s + controller.h)
        t_down, sigma_up = _ancestral_target(s, t, t_end, params.eta)
        x, _ = yield from _eps(cache, "eps", x, s)
        if order == 2:
            x_low = yield from _first_order(x, s, t_down, cache)
            x_high = yield from _second_order(x, s, t_down, cache)
        else:
            x_low = yield from _second_order(x, s, t_down, cache, r1=1 / 3)
            x_high = yield from _third_order(x, s, t_down, cache)
        delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if controller.propose_step(error):
            x_prev = x_low
            x = x_high + sigma_up * params.s_noise * noise(x, _sigma(s), _sigma(t))
            s = t
    return x
