"""One request's LoRAs across its passes: each pass activates the networks its own prompt names (A1111)."""

import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack

from engine.networks import LoraRequest
from engine.networks.lora import AppliedLoras, apply_loras
from engine.resources.catalog import ModelCatalog


logger = logging.getLogger(__name__)


class LoraSession:
    """The request LoRAs of every pass, swapped in as the passes go and all removed at `close()`.

    A1111 activates the extra networks of each pass's prompt before it runs (`extra_networks.activate`: the
    first pass's prompt, hires fix's `hr_prompt`, ADetailer's inner prompt), replacing whatever the previous
    pass had, on whichever checkpoint is loaded. Here a pass calls `use(pipe, requests)`: when the same
    LoRAs are already in the same modules nothing happens (the usual case: one load per request), otherwise
    the adapters are taken out and the new ones loaded. Only one pipeline holds adapters at a time, so text
    encoders or UNets shared between resident checkpoints are never loaded twice. Not thread-safe: one
    generation at a time, under the engine's lock.
    """

    def __init__(self, catalog: ModelCatalog, after_load: Callable[[object], None] | None = None):
        """Args:
        catalog: resolves LoRA names.
        after_load: called with the pipeline after adapters were loaded into it (tiling pads their new
            convolutions circularly too).
        """
        self.catalog = catalog
        self.after_load = after_load
        self.notes: list[str] = []
        self._active: tuple[tuple, ExitStack, AppliedLoras] | None = None

    def use(self, pipe, requests: Sequence[LoraRequest]) -> AppliedLoras:
        """Make `requests` (possibly none) the LoRAs active in `pipe`; returns what they became.

        Notes (a LoRA not found or not loadable) accumulate in `self.notes`, each once.
        """
        key = (_modules_key(pipe), tuple(requests))
        if self._active is not None and self._active[0] == key:
            return self._active[2]
        self._release()
        if not requests:
            return AppliedLoras()
        stack = ExitStack()
        try:
            applied = stack.enter_context(apply_loras(pipe, self.catalog, list(requests)))
            if self.after_load is not None:
                self.after_load(pipe)
        except BaseException:
            stack.close()
            raise
        self._active = (key, stack, applied)
        self.notes += [note for note in applied.notes if note not in self.notes]
        return applied

    def close(self) -> None:
        """Remove every adapter this session loaded (the modules are bit-identical to before)."""
        self._release()

    def __enter__(self) -> "LoraSession":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _release(self) -> None:
        if self._active is not None:
            _, stack, _ = self._active
            self._active = None
            stack.close()


def _modules_key(pipe) -> tuple[int, ...]:
    """The modules LoRAs change: a pipeline view with another VAE shares them with its source."""
    return tuple(id(getattr(pipe, name, None)) for name in ("unet", "text_encoder", "text_encoder_2"))
