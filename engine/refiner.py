"""The refiner's switch (A1111 `sd_samplers_common.apply_refiner`): a pass goes on with another checkpoint."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


logger = logging.getLogger(__name__)

# A1111 reads a pass's progress off the model timestep as (999 − t) / 1000.
LAST_TIMESTEP = 999
TIMESTEPS = 1000


def timestep_progress(timestep: int) -> float:
    """A1111's `completed_ratio` at an integer model timestep: 0.0 at t = 999, 0.999 at t = 0."""
    return (LAST_TIMESTEP - timestep) / TIMESTEPS


@dataclass(frozen=True)
class RefinerStage:
    """A pass's hand-over to the refiner checkpoint.

    Attributes:
        pipe: the refiner (an `A1111Pipeline`); its UNet and its own text encoders take over.
        switch_at: the progress (0..1) from which the refiner runs; None: from the first model call (A1111
            tests the ratio only when a value is set).
        by_sampling_steps: progress = model calls made / the pass's counted steps (A1111's
            `refiner_switch_by_sample_steps`), instead of being read off the timestep.
        infotext: the entries A1111 writes when it switches (`Refiner`, `Refiner switch at`, ...).
        before_switch: called once, right before the refiner's prompts are encoded (request LoRAs leave the
            modules the refiner may share with the pass's checkpoint).
    """

    pipe: Any
    switch_at: float | None
    by_sampling_steps: bool = False
    infotext: tuple[tuple[str, Any], ...] = ()
    before_switch: Callable[[], None] | None = None

    def due(self, sampler, call_index: int, counted_steps: int) -> bool:
        """Whether A1111 runs this model call on the refiner.

        Args:
            sampler: the pass's `PreparedSampler`, at the evaluation about to run.
            call_index: model calls made so far in this pass (A1111's `CFGDenoiser.step`).
            counted_steps: A1111's `total_steps` for the pass: its steps, × 2 for second-order samplers.
        """
        if self.switch_at is None:
            return True
        if self.by_sampling_steps:
            progress = call_index / counted_steps
        else:
            progress = timestep_progress(sampler.nearest_timestep())
        return progress >= self.switch_at


class SwitchingUNet:
    """Predicts with the pass's guided UNet until the refiner is due, then with the refiner's for the rest of
    the pass. The sampler is untouched: it keeps its state (history, noise) across the switch, as in A1111.

    Attributes:
        switch_call: the index of the first model call the refiner made, or None while it has not switched.
    """

    def __init__(
        self, first, stage: RefinerStage, sampler, counted_steps: int, make_refined: Callable[[], Any]
    ):
        """Args:
        first: the pass's `GuidedUNet`.
        stage: when and to what to switch.
        sampler: the pass's `PreparedSampler` (its current level decides the switch).
        counted_steps: A1111's `total_steps` for the pass (see `RefinerStage.due`).
        make_refined: builds the refiner's `GuidedUNet` (encodes its prompts) at the switch.
        """
        self.first = first
        self.stage = stage
        self.sampler = sampler
        self.counted_steps = counted_steps
        self.make_refined = make_refined
        self.refined = None
        self.switch_call: int | None = None

    def __call__(self, x, t, call_index: int):
        if self.refined is None and self.stage.due(self.sampler, call_index, self.counted_steps):
            if self.stage.before_switch is not None:
                self.stage.before_switch()
            self.refined = self.make_refined()
            self.switch_call = call_index
            logger.info("refiner takes over at model call %d", call_index)
        return (self.refined or self.first)(x, t, call_index)

    @property
    def calls(self) -> int:
        """UNet evaluations made by both checkpoints."""
        return self.first.calls + (self.refined.calls if self.refined is not None else 0)
