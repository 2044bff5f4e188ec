"""A1111's Restart sampler (`modules/sd_samplers_extra.py`, Xu et al. 2023): Heun steps with restart loops."""

import torch

from engine.sampling.k_euler import to_d
from engine.sampling.sigmas import karras


def _restart_plan(sigmas: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (σ_from, σ_to) Heun steps, including the jumps back up.

    A1111's automatic plan: from 20 steps on, the schedule is replaced by a Karras schedule between its own
    ends that leaves room for 9 restart steps done once (36+ steps: steps // 4 restart steps, twice),
    restarting from σ ≈ 0.1 back up to σ ≈ 2. Below 20 steps it is plain Heun on the given schedule.
    """
    steps = sigmas.shape[0] - 1
    restarts = {}
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item())
        restarts = {int(torch.argmin(abs(sigmas - 0.1), dim=0)): (restart_steps + 1, restart_times, 2.0)}

    plan = []
    for i in range(len(sigmas) - 1):
        plan.append((sigmas[i], sigmas[i + 1]))
        if i + 1 not in restarts:
            continue
        restart_steps, restart_times, restart_max = restarts[i + 1]
        max_index = int(torch.argmin(abs(sigmas - restart_max), dim=0))
        if max_index < i + 1:
            restart_sigmas = karras(restart_steps, sigmas[i + 1].item(), sigmas[max_index].item())[:-1]
            plan.extend(list(zip(restart_sigmas[:-1], restart_sigmas[1:], strict=True)) * restart_times)
    return plan


def restart(x, sigmas, noise, params):
    """Heun from σ_from to σ_to (Euler into 0); before a step that starts above where the last one ended, add
    the noise that takes x back up to σ_from."""
    last_sigma = None
    for old_sigma, new_sigma in _restart_plan(sigmas):
        if last_sigma is not None and last_sigma < old_sigma:
            x = x + noise(x, last_sigma, old_sigma) * params.s_noise * (old_sigma**2 - last_sigma**2) ** 0.5
        x, denoised = yield x, old_sigma
        d = to_d(x, old_sigma, denoised)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2, denoised_2 = yield x + d * dt, new_sigma
            x = x + (d + to_d(x_2, new_sigma, denoised_2)) / 2 * dt
        last_sigma = new_sigma
    return x
