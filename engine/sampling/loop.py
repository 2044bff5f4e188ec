"""The one denoising loop: every pass (txt2img, hires, img2img, detailer) runs through `denoise`."""

from collections.abc import Callable

import torch

from engine.sampling.transfer import to_device


# (x_in, timestep, call_index) -> epsilon prediction
NoisePredictor = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
# (call_index, total_calls, latents) -> None
StepCallback = Callable[[int, int | None, torch.Tensor], None]
# () -> whether to stop before the next model call
StopCheck = Callable[[], bool]


def denoise(
    prepared,
    latents: torch.Tensor,
    predict_noise: NoisePredictor,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
):
    """Run `prepared` (a PreparedSampler) from `latents` to the final sample.

    `latents` are already noised to the sampler's first sigma. The sampler owns the schedule and all
    noise (ancestral, Brownian); this loop only feeds it the model's epsilon, one call per timestep.
    `should_stop` is asked before every model call; once it answers yes, the loop ends and returns the
    sampler's latest denoised estimate (`prepared.last_denoised`), as A1111 returns `last_latent` when
    interrupted or skipped.

    Nothing here waits for the GPU: the schedule is on the host, and the timesteps go to the latents'
    device in one copy before the first step, so the UNet never copies a host timestep (a blocking
    host-to-device copy, i.e. a sync) per call.
    """
    x = latents
    total = prepared.model_calls
    for call_index, t in enumerate(device_timesteps(prepared.timesteps, latents.device)):
        if should_stop is not None and should_stop():
            return prepared.last_denoised
        x_in = prepared.scale_model_input(x, t)
        eps = predict_noise(x_in, t, call_index)
        x = prepared.step(eps, t, x)
        if on_step is not None:
            on_step(call_index, total, x)
    return x


def device_timesteps(timesteps, device: torch.device):
    """The planned timesteps on `device`, copied once; an adaptive run's live timesteps stay as they come."""
    if not isinstance(timesteps, torch.Tensor) or timesteps.device == device:
        return timesteps
    return to_device(timesteps, device)
