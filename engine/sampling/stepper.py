"""Run a sampling algorithm one UNet evaluation at a time: the `PreparedSampler` the denoising loop drives.

Every sampler is written once, as a generator that reads like its k-diffusion / A1111 loop: it yields each
point where it needs the model, `x_seen, prediction = yield x, level`, and returns the final latent.
`PreparedSampler` turns that into the diffusers-style contract the engine's loop uses:

    x = init_latents + noise * prepared.start_sigma
    for t in prepared.timesteps:
        eps = unet(prepared.scale_model_input(x, t), t)
        x = prepared.step(eps, t, x)

A "space" object translates between the loop and the algorithm: the UNet timestep and input scaling for a
level, the model output converted to what the algorithm consumes (denoised latent or noise), and the latent's
coordinates (the loop always holds k-diffusion's x = x0 + σ·noise; DDIM-style samplers work on sqrt(ᾱ)·x).
"""

import logging
from collections.abc import Callable, Generator, Iterator
from typing import Protocol

import torch


logger = logging.getLogger(__name__)

# What a sampling algorithm is: started with the first latent, yields (x, level) per model evaluation,
# receives (x the model saw, its prediction) and finally returns the latent to decode.
Algorithm = Callable[[torch.Tensor], Generator[tuple[torch.Tensor, torch.Tensor], tuple, torch.Tensor]]


class Space(Protocol):
    def timestep(self, level: torch.Tensor) -> torch.Tensor: ...

    def nearest_timestep(self, level: torch.Tensor) -> int: ...

    def to_model_input(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor: ...

    def from_loop(self, sample: torch.Tensor, level: torch.Tensor) -> torch.Tensor: ...

    def to_loop(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor: ...

    def prediction(self, x: torch.Tensor, level: torch.Tensor, output: torch.Tensor) -> torch.Tensor: ...

    def to_denoised(self, x: torch.Tensor, level: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor: ...

    def from_denoised(self, x: torch.Tensor, level: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor: ...


def plan_levels(algorithm: Algorithm, limit: int | None = None) -> list[torch.Tensor]:
    """The levels an algorithm will ask the model for: run it on a dummy latent with a zero model.

    Valid for every sampler whose evaluation points depend on the schedule only (all but DPM adaptive); the
    algorithm must be built with a zero noise source. `limit` stops after that many evaluations.
    """
    x = torch.zeros(1, 1, 1, 1)
    run = algorithm(x)
    levels = []
    try:
        x_eval, level = next(run)
        while limit is None or len(levels) < limit:
            levels.append(level)
            x_eval, level = run.send((x_eval, torch.zeros_like(x_eval)))
    except StopIteration:
        pass
    return levels


class PreparedSampler:
    """One request's sampler state: timesteps, initial noise scale, and `scale_model_input` / `step`.

    Attributes:
        timesteps: the UNet timesteps in evaluation order (1-D float tensor), or for adaptive samplers an
            iterable that yields the next timestep as the run goes.
        start_sigma: multiply the initial noise by this (A1111 multiplies by the first sigma, not sqrt(σ²+1)).
        model_calls: UNet evaluations the run will make (each one CFG batch), or None for adaptive samplers.
        last_denoised: what A1111 decodes when sampling stops early (`last_latent`): the denoised estimate of
            the latest evaluation (after `denoised_filter`); before the first one, what the caller set (A1111:
            the noised start latent in txt2img, the clean init latent in img2img).
    """

    def __init__(self, algorithm: Algorithm, space: Space, *, start_sigma: float, first_level: torch.Tensor,
                 timesteps: torch.Tensor | None, entry_scale: float | None = None):
        self._algorithm = algorithm
        self._space = space
        self._first_level = first_level
        self._entry_scale = entry_scale
        self._run = None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._first_pending = False
        self.finished = False
        # Inpainting: A1111 replaces the denoised estimate outside the mask with the original latent at every
        # model call (`CFGDenoiser`, x0-space blend). Set to a callable denoised → denoised to do that.
        self.denoised_filter: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.last_denoised: torch.Tensor | None = None
        self.start_sigma = float(start_sigma)
        self.timesteps = timesteps if timesteps is not None else _LiveTimesteps(self)
        self.model_calls = None if timesteps is None else len(timesteps)
        self._planned_timesteps = None if timesteps is None else timesteps.tolist()
        self._calls_made = 0

    def _start(self, sample: torch.Tensor) -> None:
        scale = self._entry_scale
        x = sample * scale if scale is not None else self._space.from_loop(sample, self._first_level)
        self._run = self._algorithm(x)
        self._pending = next(self._run)
        self._first_pending = True

    def _evaluation_point(self, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.finished:
            raise RuntimeError("the sampler has already returned its final latent")
        if self._run is None:
            self._start(sample)
        x_pending, level = self._pending
        # The first point may differ from the loop's latent (e.g. Euler's churn adds noise before the first
        # evaluation); afterwards the loop holds exactly what `step` returned, possibly modified on purpose.
        x = x_pending if self._first_pending else self._space.from_loop(sample, level)
        return x, level

    def pending_timestep(self) -> torch.Tensor:
        """The timestep of the next evaluation (adaptive samplers know it only once the last step ran)."""
        return self._space.timestep(self.current_level())

    def current_level(self) -> torch.Tensor:
        """The level (σ, or timestep for DDIM-style samplers) of the evaluation `scale_model_input` prepared."""
        return self._first_level if self._run is None else self._pending[1]

    def nearest_timestep(self) -> int:
        """The integer model timestep A1111 reads at the current evaluation (its refiner switch test)."""
        return self._space.nearest_timestep(self.current_level())

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """The UNet input for the loop's latent `sample` at the current evaluation."""
        x, level = self._evaluation_point(sample)
        return self._space.to_model_input(x, level)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        """Feed the (guided) UNet output for the current evaluation; return the next latent for the loop.

        After the last evaluation this returns the final latent, the one A1111 decodes.
        """
        x, level = self._evaluation_point(sample)
        self._check_timestep(timestep, level)
        prediction = self._space.prediction(x, level, model_output)
        denoised = self._space.to_denoised(x, level, prediction)
        if self.denoised_filter is not None:
            denoised = self.denoised_filter(denoised)
            prediction = self._space.from_denoised(x, level, denoised)
        self.last_denoised = denoised
        self._first_pending = False
        self._calls_made += 1
        try:
            self._pending = self._run.send((x, prediction))
        except StopIteration as done:
            self.finished = True
            return done.value
        return self._space.to_loop(*self._pending)


    def _check_timestep(self, timestep, level: torch.Tensor) -> None:
        """Catch a loop that fed the wrong evaluation, without reading a device tensor.

        A timestep on an accelerator is not compared: reading it would make the host wait for the GPU at every
        step. The engine's loop hands over the device copy of `timesteps` (see `engine.sampling.loop`). A
        host timestep is compared with the planned one for this call (computed once, before the loop).
        """
        if isinstance(timestep, torch.Tensor) and timestep.device.type != "cpu":
            return
        planned = self._planned_timesteps
        if planned is None:
            return  # an adaptive run's loop reads each timestep from the pending level itself
        expected = planned[self._calls_made]
        if abs(float(timestep) - expected) > 1e-3:
            raise ValueError(f"step() got timestep {float(timestep)}, the sampler expects {expected}")


class _LiveTimesteps:
    """Timesteps of an adaptive run: each is known only after the previous step, so they are read live."""

    def __init__(self, prepared: PreparedSampler):
        self._prepared = prepared

    def __iter__(self) -> Iterator[torch.Tensor]:
        while not self._prepared.finished:
            yield self._prepared.pending_timestep()
