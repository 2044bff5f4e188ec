"""Every tiny demo model, written into a models folder in A1111's layout (`python -m engine demo-models`).

Random weights: the images they make are noise. Tests, CI and newcomers without weights use them, so the
whole product runs on the real formats and code paths with no download.
"""

import functools
import json
from collections.abc import Callable
from pathlib import Path

from engine.control.demo import write_tiny_control_models
from engine.control.demo_families import write_tiny_control_families
from engine.control.maps.demo import write_random_annotators
from engine.demo.lora import write_tiny_lora
from engine.demo.tiny import INPAINTING_IN_CHANNELS, write_tiny_checkpoint
from engine.detailer.demo import write_tiny_yolo
from engine.faceswap.demo import write_tiny_reactor_models
from engine.restore.demo import write_tiny_face_restorers
from engine.upscale.demo import write_tiny_esrgan


# One writer per demo model (or family of files); each returns the paths it wrote.
DEMO_WRITERS: tuple[Callable[[Path], list[Path]], ...] = (
    functools.partial(write_tiny_checkpoint, "sd15", "tiny-sd15"),
    functools.partial(write_tiny_checkpoint, "sdxl", "tiny-sdxl"),
    # stable-diffusion-xl-refiner-1.0's layout, sharing tiny-sdxl's VAE and OpenCLIP-G as the real one does.
    functools.partial(write_tiny_checkpoint, "sdxl_refiner", "tiny-sdxl_refiner"),
    # Its own seed, so its weights differ from tiny-sd15's everywhere, not only in the 9-channel input. The
    # underscore sorts it after tiny-sd15, which stays the default when no checkpoint is configured.
    functools.partial(
        write_tiny_checkpoint, "sd15", "tiny-sd15_inpainting", seed=1, in_channels=INPAINTING_IN_CHANNELS
    ),
    write_tiny_lora,
    write_tiny_esrgan,
    write_tiny_yolo,
    write_tiny_control_models,
    write_tiny_face_restorers,
    write_tiny_reactor_models,
    write_tiny_control_families,
    write_random_annotators,  # the small ones; the large annotators only on request
)


# Lists every file the demo wrote, relative to the models folder, so that `download_models.py` never takes a
# random-weight file for the real one of the same name (it replaces them).
DEMO_MARKER = ".demo-files.json"


def write_demo_models(models_dir: Path) -> list[Path]:
    """Write every tiny demo model into `models_dir`; returns the files and folders written."""
    written: list[Path] = []
    for write in DEMO_WRITERS:
        written.extend(write(models_dir))
    _record_demo_files(models_dir, written)
    return written


def _record_demo_files(models_dir: Path, written: list[Path]) -> None:
    files = {file for path in written for file in ([path] if path.is_file() else path.rglob("*")) if file.is_file()}
    marker = models_dir / DEMO_MARKER
    listed = set(json.loads(marker.read_text())) if marker.is_file() else set()
    listed |= {file.relative_to(models_dir).as_posix() for file in files}
    marker.write_text(json.dumps(sorted(listed), indent=1))
