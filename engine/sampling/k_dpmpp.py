"""DPM-Solver++ samplers (2S a, SDE, 2M, 2M SDE, 3M SDE) as A1111 runs them from k-diffusion.

Generators over a descending sigma schedule ending in 0 (protocol in `engine.sampling.stepper`). They work in
half-log-SNR time t = -log σ; `_t` and `_sigma` convert exactly as k-diffusion does, to keep float rounding
equal.
"""

from engine.sampling.k_euler import SamplerParams, ancestral_step, to_d


def _t(sigma):
    return sigma.log().neg()


def _sigma(t):
    return t.neg().exp()


def dpmpp_2s_ancestral(x, sigmas, noise, params: SamplerParams):
    """DPM-Solver++(2S) steps (midpoint in t) to σ_down, then ancestral noise."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, denoised = yield x, sigma
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, params.eta)
        if sigma_down == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            t, t_next = _t(sigma), _t(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_mid = (_sigma(s) / _sigma(t)) * x - (-h * 0.5).expm1() * denoised
            _, denoised_mid = yield x_mid, _sigma(s)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_mid
        if sigma_next > 0:
            x = x + noise(x, sigma, sigma_next) * params.s_noise * sigma_up
    return x


def dpmpp_sde(x, sigmas, noise, params: SamplerParams, r: float = 0.5):
    """DPM-Solver++ (stochastic): two ancestral half-steps per step, the last one Euler (2N - 1 calls)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, denoised = yield x, sigma
        if sigma_next == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
            continue
        t, t_next = _t(sigma), _t(sigma_next)
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)

        sigma_down, sigma_up = ancestral_step(_sigma(t), _sigma(s), params.eta)
        s_down = _t(sigma_down)
        x_2 = (_sigma(s_down) / _sigma(t)) * x - (t - s_down).expm1() * denoised
        x_2 = x_2 + noise(x, _sigma(t), _sigma(s)) * params.s_noise * sigma_up
        _, denoised_2 = yield x_2, _sigma(s)

        sigma_down, sigma_up = ancestral_step(_sigma(t), _sigma(t_next), params.eta)
        t_next_down = _t(sigma_down)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_down) / _sigma(t)) * x - (t - t_next_down).expm1() * denoised_d
        x = x + noise(x, _sigma(t), _sigma(t_next)) * params.s_noise * sigma_up
    return x


def dpmpp_2m(x, sigmas, noise, params: SamplerParams):
    """DPM-Solver++(2M): 2nd-order multistep on the last denoised latent; first and last steps 1st order."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, denoised = yield x, sigma
        t, t_next = _t(sigma), _t(sigma_next)
        h = t_next - t
        if old_denoised is None or sigma_next == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def dpmpp_2m_sde(x, sigmas, noise, params: SamplerParams, solver_type: str = "midpoint"):
    """DPM-Solver++(2M) SDE with Brownian noise; `solver_type` "midpoint" or "heun" for the 2nd-order term."""
    old_denoised, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, denoised = yield x, sigma
        if sigma_next == 0:
            x = denoised
        else:
            h = -sigma_next.log() - -sigma.log()
            eta_h = params.eta * h
            decay = (-h - eta_h).expm1().neg()
            x = sigma_next / sigma * (-eta_h).exp() * x + decay * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (decay / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * decay * (1 / r) * (denoised - old_denoised)
            if params.eta:
                noise_std = (-2 * eta_h).expm1().neg().sqrt()
                x = x + noise(x, sigma, sigma_next) * sigma_next * noise_std * params.s_noise
        old_denoised, h_last = denoised, h
    return x


def dpmpp_3m_sde(x, sigmas, noise, params: SamplerParams):
    """DPM-Solver++(3M) SDE: third-order multistep on the last three denoised latents, with Brownian noise."""
    denoised_1, denoised_2, h, h_1, h_2 = None, None, None, None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, denoised = yield x, sigma
        if sigma_next == 0:
            x = denoised
        else:
            h = -sigma_next.log() - -sigma.log()
            h_eta = h * (params.eta + 1)
            x = (-h_eta).exp() * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
            if params.eta:
                noise_std = (-2 * h * params.eta).expm1().neg().sqrt()
                x = x + noise(x, sigma, sigma_next) * sigma_next * noise_std * params.s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x
