"""Every tiny demo model, written into a models folder in A1111's layout (`python -m engine demo-models`).

Random weights: the images they make are noise. Tests, CI and newcomers without weights use them, so the
whole product runs on the real formats and code paths with no download.
"""

import functools
from collections.abc import Callable
from pathlib import Path

from engine.control.demo import write_tiny_control_models
from engine.demo.tiny import INPAINTING_IN_CHANNELS, write_tiny_checkpoint
from engine.detailer.demo import write_tiny_yolo
from engine.restore.demo import write_tiny_face_restorers
from engine.upscale.demo import write_tiny_esrgan


# One writer per demo model (or family of files); each returns the paths it wrote.
DEMO_WRITERS: tuple[Callable[[Path], list[Path]], ...] = (
    functools.partial(write_tiny_checkpoint, "sd15", "tiny-sd15"),
    functools.partial(write_tiny_checkpoint, "sdxl", "tiny-sdxl"),
    # Its own seed, so its weights differ from tiny-sd15's everywhere, not only in the 9-channel input. The
    # underscore sorts it after tiny-sd15, which stays the default when no checkpoint is configured.
    functools.partial(
        write_tiny_checkpoint, "sd15", "tiny-sd15_inpainting", seed=1, in_channels=INPAINTING_IN_CHANNELS
    ),
    write_tiny_esrgan,
    write_tiny_yolo,
    write_tiny_control_models,
    write_tiny_face_restorers,
)


def write_demo_models(models_dir: Path) -> list[Path]:
    """Write every tiny demo model into `models_dir`; returns the files and folders written."""
    written: list[Path] = []
    for write in DEMO_WRITERS:
        written.extend(write(models_dir))
    return written
