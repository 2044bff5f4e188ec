"""Writing demo model files so that a reader never sees half of one."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


# safetensors and temp files are created owner-only; a models folder is usually read by another user (a container).
FILE_MODE = 0o644


@contextmanager
def written_atomically(path: Path) -> Iterator[Path]:
    """Yield a sibling `.partial` path to write; when the block ends without error, make it world-readable and
    move it onto `path` in one rename, so the catalog never lists a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    yield partial
    partial.chmod(FILE_MODE)
    partial.replace(path)


def torch_save_atomically(payload: dict, path: Path) -> Path:
    """`torch.save(payload)` to `path` through `written_atomically`; returns `path`."""
    with written_atomically(path) as partial:
        torch.save(payload, partial)
    return path
