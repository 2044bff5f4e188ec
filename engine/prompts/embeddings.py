"""Textual-inversion embeddings from the models folder, loaded and matched in prompts the way A1111 does."""

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine.resources.catalog import ModelCatalog
from engine.resources.entries import ModelFile
from engine.resources.model_files import damage, relative_name


logger = logging.getLogger(__name__)

# Key of the single tensor of a classic (SD1/SD2) embedding; SDXL files hold one tensor per text encoder.
SINGLE_KEY = ""
SDXL_KEYS = ("clip_l", "clip_g")


class EmbeddingFormatError(ValueError):
    """A file in the embeddings folder that is no textual-inversion embedding A1111 could read."""


@dataclass(frozen=True)
class Embedding:
    """One embedding file: its vectors per text encoder and where it came from."""

    name: str  # file stem, what a prompt writes (A1111 names embeddings by file name)
    vectors: dict[str, torch.Tensor]  # key -> (n, width) float32; SINGLE_KEY or "clip_l"/"clip_g"
    source: ModelFile | None = field(default=None, compare=False)

    @property
    def width(self) -> int:
        """A1111's `Embedding.shape`: the vector width, summed over encoders for SDXL files (768 + 1280)."""
        return sum(vectors.shape[-1] for vectors in self.vectors.values())

    @property
    def count(self) -> int:
        """Vectors it stands for in a prompt (A1111 counts `clip_g` rows for SDXL files)."""
        return self.vectors.get("clip_g", next(iter(self.vectors.values()))).shape[0]

    @property
    def shorthash(self) -> str | None:
        """sha256[:12] of the file, as A1111's infotext `TI hashes` shows it."""
        sha256 = self.source.sha256 if self.source is not None else None
        return sha256[:12] if sha256 else None


def embedding_from_data(data, name: str, source: ModelFile | None = None) -> Embedding:
    """Interpret a loaded file as A1111's `create_embedding_from_data` does.

    Accepts a classic `string_to_param` dict holding one tensor, an SDXL dict with `clip_l` and `clip_g`,
    or a "diffusers concept" dict of one tensor (a 1-D vector counts as one row).

    Raises:
        EmbeddingFormatError: none of these shapes.
    """
    if not isinstance(data, dict):
        raise EmbeddingFormatError(f"holds a {type(data).__name__}, not a dict of tensors")
    if "string_to_param" in data:
        # Files saved by torch 1.11 hold a ParameterDict; its tensors sit in `_parameters`.
        params = getattr(data["string_to_param"], "_parameters", data["string_to_param"])
        return Embedding(name, {SINGLE_KEY: _only_tensor(params)}, source)
    if "clip_l" in data and "clip_g" in data:
        return Embedding(name, {key: _as_rows(data[key], key) for key in SDXL_KEYS}, source)
    return Embedding(name, {SINGLE_KEY: _only_tensor(data)}, source)


def _only_tensor(params) -> torch.Tensor:
    if not isinstance(params, dict) or len(params) != 1:
        raise EmbeddingFormatError("holds several terms (or none); an embedding holds exactly one tensor")
    return _as_rows(next(iter(params.values())), "the tensor")


def _as_rows(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim not in (1, 2):
        raise EmbeddingFormatError(f"{what} is not a 1-D or 2-D tensor")
    return value.detach().to(device="cpu", dtype=torch.float32).reshape(-1, value.shape[-1])


def load_embedding(entry: ModelFile) -> Embedding:
    """Read one embedding file; pickles (.pt/.bin) are loaded with `weights_only=True`, never executed.

    Raises:
        EmbeddingFormatError: not an embedding, or a pickle that holds more than plain tensors and dicts.
    """
    suffix = entry.path.suffix.lower()
    try:
        data = (
            load_file(entry.path, device="cpu")
            if suffix == ".safetensors"
            else torch.load(entry.path, map_location="cpu", weights_only=True)
        )
    except Exception as exc:  # a corrupt or unsafe file must not stop the others loading (A1111 skips it too)
        raise EmbeddingFormatError(f"cannot be read safely ({type(exc).__name__}: {exc})") from exc
    return embedding_from_data(data, entry.stem, entry)


class EmbeddingDatabase:
    """Every embedding under the catalog's embeddings folders (A1111 layout, searched recursively).

    `refresh()` reloads when a folder or file changed, so files copied in while the worker runs are
    picked up without a restart (A1111 reloads before each job when the folder's mtime grew). Thread-safe.
    """

    def __init__(self, catalog: ModelCatalog):
        self.catalog = catalog
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._loaded: dict[str, Embedding] = {}
        self._failed: dict[str, str] = {}  # name -> why it could not be loaded
        self._by_file: dict[Path, tuple[tuple[int, int], Embedding | str]] = {}
        self._selections: dict[tuple[int, tuple[str, ...]], EmbeddingSet] = {}

    def refresh(self) -> bool:
        """Reload if anything in the embeddings folders changed since the last call; True when it did."""
        signature = _folder_signature(self.catalog.folders("embeddings"))
        with self._lock:
            if signature == self._signature:
                return False
            self.catalog.refresh("embeddings")
            self._reload(self.catalog.entries("embeddings"))
            self._signature = signature
            self._selections.clear()
        logger.info(
            "textual inversion: %d embeddings loaded, %d unreadable", len(self._loaded), len(self._failed)
        )
        return True

    def select(self, width: int, keys: Sequence[str]) -> "EmbeddingSet":
        """The embeddings a model can use: `width` is its token-embedding width (summed over encoders, as
        A1111's expected shape), `keys` the vector key each encoder reads (SINGLE_KEY, or clip_l/clip_g)."""
        if self._signature is None:
            self.refresh()
        with self._lock:
            selection_key = (width, tuple(keys))
            if selection_key not in self._selections:
                usable, skipped = {}, dict(self._failed)
                for name, embedding in self._loaded.items():
                    reason = _unusable_reason(embedding, width, keys)
                    if reason is None:
                        usable[name] = embedding
                    else:
                        skipped[name] = reason
                self._selections[selection_key] = EmbeddingSet(usable, skipped)
            return self._selections[selection_key]

    def _reload(self, entries: Iterable[ModelFile]) -> None:
        loaded, failed, by_file = {}, {}, {}
        for entry in entries:
            version = _version(entry.path)
            if version is None or version[0] == 0:
                continue  # gone meanwhile, or empty: A1111 skips empty files (a copy in progress)
            known = self._by_file.get(entry.path)
            result = known[1] if known and known[0] == version else _load_or_reason(entry, self.catalog.root)
            by_file[entry.path] = (version, result)
            if entry.stem in loaded or entry.stem in failed:
                logger.warning("textual inversion: two files are named %r; using %s", entry.stem, entry.path)
                loaded.pop(entry.stem, None)
                failed.pop(entry.stem, None)
            if isinstance(result, Embedding):
                loaded[entry.stem] = result
            else:
                failed[entry.stem] = result
        self._loaded, self._failed, self._by_file = loaded, failed, by_file


def _load_or_reason(entry: ModelFile, root: Path) -> Embedding | str:
    """The embedding, or why its file cannot be used (naming it relative to the models folder `root`)."""
    problem = damage(entry.path, root)
    if problem is not None:
        logger.warning("textual inversion: skipping %s", problem)
        return problem
    try:
        return load_embedding(entry)
    except EmbeddingFormatError as exc:
        logger.warning("textual inversion: skipping %s: %s", entry.path, exc)
        return f"{relative_name(entry.path, root)} {exc}"


def _unusable_reason(embedding: Embedding, width: int, keys: Sequence[str]) -> str | None:
    # A1111 compares the embedding's shape with the model's and keeps mismatches as `skipped_embeddings`.
    if embedding.width != width:
        return f"its vectors are {embedding.width} wide and this model's text encoder needs {width}"
    missing = [key for key in keys if key not in embedding.vectors]
    if missing:
        return f"it has no {'/'.join(missing)} vectors, which this model needs"
    return None


def _folder_signature(folders: Iterable[Path]) -> tuple:
    """Every directory and file (with size and mtime) under the folders: any change forces a reload."""
    seen = []
    for folder in folders:
        for directory, subfolders, files in os.walk(folder, followlinks=True):
            subfolders.sort()
            seen.append((directory, _version(Path(directory))))
            seen += [(name, _version(Path(directory, name))) for name in sorted(files)]
    return tuple(seen)


def _version(path: Path) -> tuple[int, int] | None:
    """(size, mtime) of a file or folder; None when it vanished between listing and looking."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


class EmbeddingSet:
    """Embeddings one model can use, plus the ones it cannot, kept so that a prompt naming one gets a note."""

    def __init__(self, usable: dict[str, Embedding], skipped: dict[str, str]):
        self.usable = usable
        self.skipped = skipped  # name -> why it is left as plain text
        self._tables: list[tuple[object, dict[int, list[tuple[tuple[int, ...], str]]]]] = []
        self._table_lock = threading.Lock()

    def matcher(self, tokenizer) -> "EmbeddingMatcher":
        """A matcher over ids from `tokenizer`; names are tokenised by the same tokenizer, as A1111 does."""
        with self._table_lock:
            table = next((table for owner, table in self._tables if owner is tokenizer), None)
            if table is None:
                table = _lookup_table(tokenizer, [*self.usable, *self.skipped])
                self._tables.append((tokenizer, table))
        return EmbeddingMatcher(self, table)


def _lookup_table(tokenizer, names: Sequence[str]) -> dict[int, list[tuple[tuple[int, ...], str]]]:
    """First token id -> (ids, name), longest first (A1111 `register_embedding_by_name`)."""
    table: dict[int, list[tuple[tuple[int, ...], str]]] = {}
    if not names:
        return table
    for name, ids in zip(names, tokenizer(list(names), add_special_tokens=False)["input_ids"], strict=True):
        if ids:
            table.setdefault(ids[0], []).append((tuple(ids), name))
    for candidates in table.values():
        candidates.sort(key=lambda candidate: len(candidate[0]), reverse=True)
    return table


class EmbeddingMatcher:
    """`chunks.Vocabulary.find_embedding` for one encode call; remembers skipped embeddings it saw."""

    def __init__(self, embeddings: EmbeddingSet, table: dict[int, list[tuple[tuple[int, ...], str]]]):
        self.embeddings = embeddings
        self.table = table
        self.mentioned_skipped: dict[str, str] = {}

    def __call__(self, ids: Sequence[int], position: int) -> tuple[str, int, int] | None:
        """(name, vector count, id count) of the longest usable embedding name starting at `position`."""
        skipped_here = None
        for candidate, name in self.table.get(ids[position], ()):
            if tuple(ids[position : position + len(candidate)]) != candidate:
                continue
            embedding = self.embeddings.usable.get(name)
            if embedding is not None:
                return name, embedding.count, len(candidate)
            skipped_here = skipped_here or name
        if skipped_here is not None:
            self.mentioned_skipped[skipped_here] = self.embeddings.skipped[skipped_here]
        return None

    def embedding(self, name: str) -> Embedding:
        return self.embeddings.usable[name]
