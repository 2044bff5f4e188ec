"""Seamless tiling (A1111 `tiling`): the UNet and VAE convolutions pad circularly for one request only."""

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


logger = logging.getLogger(__name__)

CIRCULAR = "circular"


class CircularPadding:
    """Switches `torch.nn.Conv2d` layers to circular padding and remembers how each one padded before.

    A1111 (`sd_hijack.apply_circular`) sets `padding_mode = "circular"` on every layer whose type is exactly
    `torch.nn.Conv2d` in the loaded model (UNet and VAE; the text encoders have none), so the image wraps
    around at its edges: its left side continues its right side, its top its bottom. Subclasses are left
    alone as in A1111; PEFT's LoRA convolutions are plain `Conv2d` inside their wrapper, so they follow.
    """

    def __init__(self):
        self._saved: dict[torch.nn.Conv2d, str] = {}

    def cover(self, *modules: torch.nn.Module | None) -> None:
        """Pad every plain Conv2d inside `modules` circularly (layers already covered are skipped)."""
        for module in modules:
            if module is None:
                continue
            for layer in module.modules():
                if type(layer) is torch.nn.Conv2d and layer not in self._saved:
                    self._saved[layer] = layer.padding_mode
                    layer.padding_mode = CIRCULAR

    def restore(self) -> None:
        """Give every covered layer back the padding mode it had."""
        saved, self._saved = self._saved, {}
        for layer, mode in saved.items():
            layer.padding_mode = mode

    @property
    def layers(self) -> int:
        return len(self._saved)


@contextmanager
def circular_padding(
    enabled: bool, modules: Iterable[torch.nn.Module | None]
) -> Iterator[CircularPadding | None]:
    """Within the block, pad the convolutions of `modules` circularly when `enabled`; restored on exit,
    whether the block succeeds or fails. Yields the `CircularPadding` (to cover modules added later, such as
    a LoRA's convolutions), or None when tiling is off."""
    if not enabled:
        yield None
        return
    padding = CircularPadding()
    try:
        padding.cover(*modules)
        logger.debug("tiling: %d convolutions pad circularly", padding.layers)
        yield padding
    finally:
        padding.restore()
