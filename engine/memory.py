"""Running out of memory during a generation: free what the failed attempt held, retry once with lower-memory
settings, else fail with one clear line. The shared models are never switched to those settings: the retry
runs on views of the pipelines (`A1111Pipeline.with_low_memory`), so the next request runs at full speed.

A1111 has no such retry (an out-of-memory error fails the request); this is the worker's own recovery.
"""

import gc
import logging
from collections.abc import Callable
from typing import TypeVar

import torch

from engine.errors import OutOfMemory
from engine.imaging.vae_tiling import VaeTiling


logger = logging.getLogger(__name__)

Result = TypeVar("Result")

# The retry's settings: the VAE always in 512-pixel tiles (a fraction of a 1024² decode's activations) and
# every UNet call one row at a time (cond and uncond, image by image) instead of the whole CFG batch.
LOW_MEMORY_VAE_TILING = VaeTiling(above_pixels=0, tile_size=512, overlap=64)
LOW_MEMORY_UNET_ROWS = 1
RETRY_NOTE = (
    "out of memory ({error}); retried once with lower-memory settings (the VAE in 512-pixel tiles, the UNet "
    "one row at a time): the images can differ slightly from a normal run, since tiles and smaller batches "
    "change float rounding"
)
# A CPU allocation failure is a plain RuntimeError from the default allocator.
CPU_OUT_OF_MEMORY = "DefaultCPUAllocator: can't allocate memory"


def is_out_of_memory(exc: BaseException) -> bool:
    """A device (CUDA) out-of-memory error, or a failed CPU allocation."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and CPU_OUT_OF_MEMORY in str(exc)
    )


def run_with_memory_fallback(
    attempt: Callable[[bool], Result], device: torch.device
) -> tuple[Result, str | None]:
    """`attempt(False)`; if it runs out of memory, free memory and run `attempt(True)` (lower-memory settings)
    once.

    Returns:
        The result, and the response note when the retry produced it (None otherwise).

    Raises:
        OutOfMemory: the retry ran out of memory too.
    """
    try:
        return attempt(False), None
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        first = summary(exc)
    # Out of the handler, the failed attempt's frames are released with the tensors they held.
    free_memory(device)
    logger.warning("out of memory (%s): retrying once with lower-memory settings", first)
    try:
        return attempt(True), RETRY_NOTE.format(error=first)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        second = summary(exc)
    free_memory(device)
    raise OutOfMemory(
        f"out of memory even with lower-memory settings ({second}); ask for fewer or smaller images"
    )


def free_memory(device: torch.device) -> None:
    """Collect what the failed attempt left unreachable and hand cached CUDA blocks back to the driver."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def summary(exc: BaseException) -> str:
    """The error's first two sentences ("CUDA out of memory. Tried to allocate 2.00 GiB"); CUDA's message goes
    on with allocator statistics."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return ". ".join(text.splitlines()[0].split(". ")[:2]).rstrip(".")
