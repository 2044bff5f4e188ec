"""Loading a file the catalog listed: a damaged, truncated or vanished file becomes one clear error naming it
(relative to the models folder) before anything is cached, and a vanished one refreshes the listing.

Cheap structural checks run first: a safetensors file must hold exactly the bytes its header describes, and a
zip-format pickle (`torch.save`) must end with the archive's central directory. Anything the loader itself
then fails on (a garbled pickle, a foreign file) is reported the same way. Damaged tensor bytes inside an
intact file cannot be told from valid weights without a known hash.
"""

import json
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch

from engine.errors import EngineError, ModelFileError, NotFoundError


if TYPE_CHECKING:
    from engine.resources.catalog import ModelCatalog


logger = logging.getLogger(__name__)

Loaded = TypeVar("Loaded")

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
# A safetensors header above this is not a header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000
# Failures that say nothing about the file: they propagate as they are.
NOT_THE_FILE = (EngineError, MemoryError, ImportError, torch.OutOfMemoryError, torch.AcceleratorError)


def load_listed(catalog: "ModelCatalog", path: Path, field: str, load: Callable[[], Loaded]) -> Loaded:
    """`load()` the model file (or folder) `path`, which `catalog` listed.

    Args:
        catalog: the `ModelCatalog` that listed `path` (its root names files; its listings are refreshed when
            the file is gone).
        field: the request field that chose the file, for the error message.

    Raises:
        NotFoundError: the file was removed after it was listed.
        ModelFileError: the file is damaged or the loader cannot read it.
    """
    relative = relative_name(path, catalog.root)
    if not path.exists():
        _vanished(catalog, relative, field)
    problem = damage(path, catalog.root)
    if problem is not None:
        raise ModelFileError(field, f"{problem}; replace the file")
    try:
        return load()
    except NOT_THE_FILE:
        raise
    except Exception as exc:
        if not path.exists():
            _vanished(catalog, relative, field)
        logger.warning("cannot load %s", path, exc_info=exc)
        reason = _first_line(exc).replace(str(path), relative).replace(f"{catalog.root}{os.sep}", "")
        raise ModelFileError(
            field, f"{relative} cannot be loaded ({type(exc).__name__}: {reason}); the file may be damaged"
        ) from None


def relative_name(path: Path, root: Path) -> str:
    """`path` as a name under the models folder ("Lora/x.safetensors"; "../embeddings/y.pt" beside it)."""
    return Path(os.path.relpath(Path(path).absolute(), Path(root).absolute())).as_posix()


def damage(path: Path, root: Path) -> str | None:
    """What is structurally wrong with a model file or folder, as a sentence naming the file relative to
    `root` (the models folder), or None."""
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*/*.safetensors"))
        return next((found for file in files if (found := damage(file, root)) is not None), None)
    suffix = path.suffix.lower()
    checks = {".safetensors": _safetensors_damage, **dict.fromkeys(PICKLE_SUFFIXES, _zip_damage)}
    problem = checks[suffix](path) if suffix in checks else None
    return f"{relative_name(path, root)} {problem}" if problem else None


def _safetensors_damage(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as stream:
        header_length = int.from_bytes(stream.read(8), "little")
        if size < 8 or not 2 <= header_length <= min(size - 8, MAX_HEADER_BYTES):
            return f"is not a readable safetensors file (truncated, or its header is damaged: {size} bytes)"
        try:
            header = json.loads(stream.read(header_length))
            end = max(
                (int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"),
                default=0,
            )
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "has a damaged safetensors header"
    expected = 8 + header_length + end
    if size < expected:
        return f"is truncated: {size} bytes of the {expected} its header describes"
    if size > expected:
        return f"is damaged: {size - expected} bytes more than its header describes"
    return None


def _zip_damage(path: Path) -> str | None:
    with open(path, "rb") as stream:
        magic = stream.read(len(ZIP_MAGIC))
    archive = zipfile.is_zipfile(path)
    if magic == ZIP_MAGIC and not archive:
        return "is truncated: its archive has no central directory"
    if magic != ZIP_MAGIC and archive:
        return "is damaged: the start of its archive is overwritten"
    return None  # an intact archive, or a legacy (non-zip) pickle the loader will judge


def _vanished(catalog: "ModelCatalog", relative: str, field: str):
    catalog.refresh()
    raise NotFoundError(
        field, f"{relative} is no longer in the models folder (removed after it was listed); listings refreshed"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"
