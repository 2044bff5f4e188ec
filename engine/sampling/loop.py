"""The one denoising loop: every pass (txt2img, hires, img2img, detailer) runs through `denoise`."""

from collections.abc import Callable

import torch


# (x_in, timestep, call_index) -> epsilon prediction
NoisePredictor = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
# (call_index, total_calls, latents) -> None; raise to cancel
StepCallback = Callable[[int, int | None, torch.Tensor], None]


def denoise(
    prepared, latents: torch.Tensor, predict_noise: NoisePredictor, on_step: StepCallback | None = None
):
    """Run `prepared` (a PreparedSampler) from `latents` to the final sample.

    `latents` are already noised to the sampler's first sigma. The sampler owns the schedule and all
    noise (ancestral, Brownian); this loop only feeds it the model's epsilon, one call per timestep.
    """
    x = latents
    total = prepared.model_calls
    for call_index, t in enumerate(prepared.timesteps):
        x_in = prepared.scale_model_input(x, t)
        eps = predict_noise(x_in, t, call_index)
        x = prepared.step(eps, t, x)
        if on_step is not None:
            on_step(call_index, total, x)
    return x
