"""Euler, Heun, DPM2 (with Karras churn), their ancestral forms, and LMS, as A1111 runs them from k-diffusion.

Each sampler is a generator over a descending sigma schedule ending in 0 (see `engine.sampling.stepper`):
`x, denoised = yield x, sigma` asks for the denoised latent at (x, sigma). Arithmetic follows k-diffusion's
order of operations on float32 0-dim sigma tensors, so results agree with it to float rounding.
"""

from dataclasses import dataclass

import torch
from scipy import integrate


@dataclass(frozen=True)
class SamplerParams:
    """The per-request knobs A1111 hands to a sampler function, resolved to the values it runs with."""

    eta: float = 1.0
    s_noise: float = 1.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dσ."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float):
    """Split a step σ_from -> σ_to into a deterministic move to σ_down plus fresh noise of size σ_up."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _churned(x, sigmas, i, noise, params: SamplerParams):
    """Karras et al. (2022) Algorithm 2 "churn": raise σ by a factor (1 + γ) with fresh noise inside
    [s_tmin, s_tmax]. With churn on, the noise is drawn on every step, used or not, as k-diffusion does (so
    the draws that are used match A1111's); with s_churn 0 (A1111's default) no step uses it and none is drawn.
    """
    sigma = sigmas[i]
    if not params.s_churn:
        return x, sigma
    steps = len(sigmas) - 1
    gamma = min(params.s_churn / steps, 2**0.5 - 1) if params.s_tmin <= sigma <= params.s_tmax else 0.0
    eps = noise(x, sigma, sigmas[i + 1]) * params.s_noise
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


def euler(x, sigmas, noise, params: SamplerParams):
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, noise, params)
        x, denoised = yield x, sigma_hat
        d = to_d(x, sigma_hat, denoised)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


def heun(x, sigmas, noise, params: SamplerParams):
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, noise, params)
        sigma_next = sigmas[i + 1]
        x, denoised = yield x, sigma_hat
        d = to_d(x, sigma_hat, denoised)
        dt = sigma_next - sigma_hat
        if sigma_next == 0:
            x = x + d * dt
            continue
        x_2, denoised_2 = yield x + d * dt, sigma_next
        d_2 = to_d(x_2, sigma_next, denoised_2)
        x = x + (d + d_2) / 2 * dt
    return x


def dpm_2(x, sigmas, noise, params: SamplerParams):
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, noise, params)
        sigma_next = sigmas[i + 1]
        x, denoised = yield x, sigma_hat
        d = to_d(x, sigma_hat, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma_hat)
            continue
        # Midpoint in log σ.
        sigma_mid = sigma_hat.log().lerp(sigma_next.log(), 0.5).exp()
        x_2, denoised_2 = yield x + d * (sigma_mid - sigma_hat), sigma_mid
        d_2 = to_d(x_2, sigma_mid, denoised_2)
        x = x + d_2 * (sigma_next - sigma_hat)
    return x


def euler_ancestral(x, sigmas, noise, params: SamplerParams):
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, denoised = yield x, sigma
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, params.eta)
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        if sigma_next > 0:
            x = x + noise(x, sigma, sigma_next) * params.s_noise * sigma_up
    return x


def dpm_2_ancestral(x, sigmas, noise, params: SamplerParams):
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, denoised = yield x, sigma
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, params.eta)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
            continue
        sigma_mid = sigma.log().lerp(sigma_down.log(), 0.5).exp()
        x_2, denoised_2 = yield x + d * (sigma_mid - sigma), sigma_mid
        d_2 = to_d(x_2, sigma_mid, denoised_2)
        x = x + d_2 * (sigma_down - sigma)
        x = x + noise(x, sigma, sigma_next) * params.s_noise * sigma_up
    return x


def _lms_coefficient(order: int, sigmas, i: int, j: int) -> float:
    """∫ over [σ_i, σ_{i+1}] of the Lagrange basis polynomial for the j-th previous derivative."""
    def basis(tau):
        product = 1.0
        for k in range(order):
            if k != j:
                product *= (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k])
        return product

    return integrate.quad(basis, sigmas[i], sigmas[i + 1], epsrel=1e-4)[0]


def lms_coefficients(sigmas: torch.Tensor, order: int = 4) -> list[list[float]]:
    """Per step, the weights of the last (up to) `order` derivatives, newest first: host work done once per
    schedule (the planning run and the real run share it)."""
    sigmas_host = sigmas.detach().cpu().numpy()
    return [
        [_lms_coefficient(min(i + 1, order), sigmas_host, i, j) for j in range(min(i + 1, order))]
        for i in range(len(sigmas_host) - 1)
    ]


def lms(x, sigmas, noise, params: SamplerParams, order: int = 4, coefficients: list[list[float]] | None = None):
    """Linear multistep over the last (up to) 4 derivatives, coefficients integrated numerically."""
    coefficients = lms_coefficients(sigmas, order) if coefficients is None else coefficients
    derivatives = []
    for i in range(len(sigmas) - 1):
        x, denoised = yield x, sigmas[i]
        derivatives = [*derivatives, to_d(x, sigmas[i], denoised)][-order:]
        x = x + sum(c * d for c, d in zip(coefficients[i], reversed(derivatives), strict=False))
    return x
