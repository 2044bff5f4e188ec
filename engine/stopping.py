"""Stopping a running generation early, as A1111's `shared.state` flags do: interrupt, skip and a job timeout.

A1111 (`sd_samplers_cfg_denoiser.CFGDenoiser.forward`) checks `state.interrupted or state.skipped` before every
model call and, when set, ends sampling with the latest estimate of the clean latent (`launch_sampling` returns
`last_latent`), which is then decoded like a finished result. (v1.10 keeps the first prompt's un-guided
prediction there; this worker keeps the guided denoised estimate, as earlier versions did.) Interrupt then stops
the whole job (no hires pass, no further batch iterations: `processing.process_images_inner`,
`sample_hr_pass`); skip only ends the batch iteration under way, and is cleared when the next one starts. A
timeout here is an interrupt raised by the clock. Pure: no torch.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


INTERRUPT_REASON = "interrupted by POST /sdapi/v1/interrupt"
SKIP_REASON = "skipped by POST /sdapi/v1/skip"


@dataclass(frozen=True)
class Deadline:
    """When a job must stop: `seconds` after it started (`JOB_TIMEOUT_S`)."""

    seconds: float
    started: float

    @classmethod
    def after(cls, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> "Deadline | None":
        return None if seconds is None else cls(seconds, clock())

    def passed(self, now: float) -> bool:
        return now - self.started >= self.seconds

    @property
    def reason(self) -> str:
        return f"stopped by the job timeout (JOB_TIMEOUT_S={self.seconds:g} s)"


class StopSignal:
    """The stop requests of one running job; thread-safe (the doors set it, the generation reads it).

    The generation asks `requested()` before every model call, calls `begin_iteration()` at the start of each
    batch iteration and reads `interrupted` between its stages.
    """

    def __init__(self, deadline: Deadline | None = None, clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._deadline = deadline
        self._clock = clock
        self._interrupt_reason: str | None = None
        self._skipped = False
        self._took_effect = False

    def interrupt(self, reason: str = INTERRUPT_REASON) -> None:
        """Stop the job at its next model call, keeping what it made so far."""
        with self._lock:
            self._interrupt_reason = self._interrupt_reason or reason

    def skip(self) -> None:
        """End the current batch iteration at its next model call; later iterations run normally."""
        with self._lock:
            self._skipped = True

    @property
    def interrupted(self) -> bool:
        """Interrupted, or past the deadline (which then counts as an interrupt)."""
        return self.interrupt_reason is not None

    @property
    def interrupt_reason(self) -> str | None:
        with self._lock:
            if self._interrupt_reason is None and self._deadline and self._deadline.passed(self._clock()):
                self._interrupt_reason = self._deadline.reason
            return self._interrupt_reason

    @property
    def skipped(self) -> bool:
        with self._lock:
            return self._skipped

    def requested(self) -> bool:
        """Whether sampling must end before the next model call (interrupt, timeout or skip)."""
        stop = self.interrupted or self.skipped
        if stop:
            with self._lock:
                self._took_effect = True
        return stop

    def begin_iteration(self) -> None:
        """A new batch iteration starts: a skip applies no longer (A1111 resets `state.skipped` here)."""
        with self._lock:
            self._skipped = False
            self._took_effect = False

    def took_effect(self) -> bool:
        """Whether a stop cut sampling short in the current batch iteration."""
        with self._lock:
            return self._took_effect

    @property
    def reason(self) -> str | None:
        """Why the job stops (interrupt or timeout), else why this iteration stops (skip), else None."""
        return self.interrupt_reason or (SKIP_REASON if self.skipped else None)
