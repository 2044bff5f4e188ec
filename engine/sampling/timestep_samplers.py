"""A1111's own DDIM and PLMS (`sd_samplers_timesteps_impl.py`) on timesteps `range(0, 1000, 1000 // n) + 1`.

Generators in the `engine.sampling.stepper` protocol with UNet timesteps as levels: `x, eps = yield x, t` asks
for the noise prediction at the variance-preserving latent x (A1111 feeds it to the UNet unscaled). A1111
walks the timesteps from the last down to index 1, so n timesteps make n - 1 steps and the result stays at
timestep 1.
"""

import numpy as np
import torch


def a1111_timesteps(steps: int, train_steps: int = 1000) -> torch.Tensor:
    """A1111 `CompVisSampler.get_timesteps`: 1, 1 + k, 1 + 2k, ... (k = 1000 // steps), clipped to 999.

    When k does not divide 1000 there are more than `steps` of them (steps=3: 1, 334, 667, 999).
    """
    return torch.clip(torch.arange(0, train_steps, train_steps // steps) + 1, 0, train_steps - 1)


def _alphas(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor):
    """ᾱ at each timestep and at the one before it (timestep 0's ᾱ for the first), as A1111 indexes them."""
    alphas = alphas_cumprod[timesteps]
    previous = torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))
    alphas_prev = alphas_cumprod[previous].to(torch.float64)
    return alphas, alphas_prev


def ddim(x, timesteps, noise, params, alphas_cumprod):
    """DDIM with A1111's eta (default 0); the eta noise is drawn every step, as A1111's `randn_like` does."""
    alphas, alphas_prev = _alphas(alphas_cumprod, timesteps)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    # A1111 computes the eta sigmas in float64 from float32 ᾱ (with 1 - ᾱ_t taken in float32).
    prev = alphas_prev.numpy()
    one_minus = (1 - alphas).to(torch.float64).numpy()
    ratio = (alphas.to(torch.float64) / alphas_prev).numpy()
    sigmas = params.eta * np.sqrt((1 - prev) / one_minus * (1 - ratio))
    for index in range(len(timesteps) - 1, 0, -1):
        x, e_t = yield x, timesteps[index].float()
        a_t = torch.tensor(alphas[index].item(), dtype=torch.float32)
        a_prev = torch.tensor(alphas_prev[index].item(), dtype=torch.float32)
        sigma_t = torch.tensor(sigmas[index].item(), dtype=torch.float32)
        sqrt_one_minus_at = torch.tensor(sqrt_one_minus_alphas[index].item(), dtype=torch.float32)
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
        x = a_prev.sqrt() * pred_x0 + dir_xt + sigma_t * noise(x)
    return x


# Adams-Bashforth weights on (current, previous, ...) noise predictions, by how many previous ones exist.
_PLMS_WEIGHTS = {1: ((3, -1), 2), 2: ((23, -16, 5), 12), 3: ((55, -59, 37, -9), 24)}


def plms(x, timesteps, noise, params, alphas_cumprod):
    """Pseudo linear multistep: first a pseudo improved Euler step (two evaluations), then 2nd-4th order."""
    alphas, alphas_prev = _alphas(alphas_cumprod, timesteps)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)

    def previous_x(x, e_t, index):
        a_t = torch.tensor(alphas[index].item(), dtype=torch.float32)
        a_prev = torch.tensor(alphas_prev[index].item(), dtype=torch.float32)
        sqrt_one_minus_at = torch.tensor(sqrt_one_minus_alphas[index].item(), dtype=torch.float32)
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t

    old_eps = []
    for index in range(len(timesteps) - 1, 0, -1):
        x, e_t = yield x, timesteps[index].float()
        if not old_eps:
            _, e_t_next = yield previous_x(x, e_t, index), timesteps[max(index - 1, 0)].float()
            e_t_prime = (e_t + e_t_next) / 2
        else:
            weights, divisor = _PLMS_WEIGHTS[len(old_eps)]
            history = [e_t, *reversed(old_eps)]
            e_t_prime = sum(w * e for w, e in zip(weights, history, strict=False)) / divisor
        x = previous_x(x, e_t_prime, index)
        old_eps = [*old_eps, e_t][-3:]
    return x
