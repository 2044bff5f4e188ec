"""A1111's model hashes (full sha256, legacy 8-hex, LoRA "addnet") and a JSON cache so each file is hashed once."""

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# A1111 `sd_models.model_hash` (and sd-webui-controlnet's "name [hash]"): the sha256 of the 64 KiB that start
# 1 MiB into the file, first 8 hex digits. Files shorter than 1 MiB hash the empty string, as in A1111.
OLD_HASH_OFFSET = 0x100000
OLD_HASH_LENGTH = 0x10000
CACHE_FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    """Full sha256 of a file as 64 lower-case hex digits (A1111 `hashes.calculate_sha256`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def old_model_hash(path: Path) -> str:
    """A1111's legacy 8-hex model hash: sha256 of bytes 0x100000..0x110000."""
    with open(path, "rb") as stream:
        stream.seek(OLD_HASH_OFFSET)
        return hashlib.sha256(stream.read(OLD_HASH_LENGTH)).hexdigest()[:8]


def addnet_hash_file(path: Path) -> str:
    """kohya-ss "addnet" hash A1111 uses for safetensors LoRAs: sha256 of everything after the JSON header."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        header_length = int.from_bytes(stream.read(8), "little")
        stream.seek(8 + header_length)
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_safetensors_metadata(path: Path) -> dict[str, Any]:
    """The `__metadata__` map of a safetensors header (e.g. a LoRA's `ss_output_name`); {} when absent.

    Raises:
        ValueError: the file does not start with a safetensors JSON header.
    """
    with open(path, "rb") as stream:
        header_length = int.from_bytes(stream.read(8), "little")
        if not 2 <= header_length <= os.fstat(stream.fileno()).st_size - 8:
            raise ValueError(f"{path} is not a safetensors file (header length {header_length})")
        header = json.loads(stream.read(header_length))
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


# What a cache entry can hold, and how to compute each value.
HASHERS: dict[str, Callable[[Path], str]] = {
    "sha256": sha256_file,
    "model_hash": old_model_hash,
    "addnet": addnet_hash_file,
}


class HashCache:
    """Hashes per file version, persisted as JSON so a restart does not re-hash gigabytes.

    Entries are keyed by the path relative to `root` (absolute when outside it) and hold the file's size
    and mtime; a file whose size or mtime changed is hashed again. Writes go to a temporary file that
    replaces the cache atomically, merged with what other processes wrote meanwhile. With `cache_path`
    None, or when the file cannot be written, hashes are kept in memory only.
    """

    def __init__(self, cache_path: Path | None, root: Path):
        self.cache_path = cache_path
        self.root = Path(root).absolute()
        self._lock = threading.Lock()
        self._file_locks: dict[str, threading.Lock] = {}
        self._entries: dict[str, dict[str, Any]] | None = None

    def get(self, path: Path, hash_name: str = "sha256") -> str:
        """A hash of `path` (a key of HASHERS), computed at most once per version of the file."""
        if hash_name not in HASHERS:
            raise ValueError(f"unknown hash {hash_name!r}; known: {sorted(HASHERS)}")
        key, version = self._key(path), _file_version(path)
        with self._lock_for(key):
            cached = self._lookup(key, version, hash_name)
            if cached is not None:
                return cached
            logger.info("computing %s of %s", hash_name, path)
            value = HASHERS[hash_name](path)
            self._store(key, version, hash_name, value)
            return value

    def peek(self, path: Path, hash_name: str = "sha256") -> str | None:
        """The cached hash of the current version of `path`, or None; never reads the file."""
        try:
            version = _file_version(path)
        except OSError:
            return None
        return self._lookup(self._key(path), version, hash_name)

    def _key(self, path: Path) -> str:
        absolute = Path(path).absolute()
        if absolute.is_relative_to(self.root):
            return absolute.relative_to(self.root).as_posix()
        return absolute.as_posix()

    def _lock_for(self, key: str) -> threading.Lock:
        # One lock per file: two threads asking for the same checkpoint hash it once, others in parallel.
        with self._lock:
            return self._file_locks.setdefault(key, threading.Lock())

    def _lookup(self, key: str, version: dict[str, int], hash_name: str) -> str | None:
        with self._lock:
            entry = self._loaded().get(key)
            return entry.get(hash_name) if _describes(entry, version) else None

    def _store(self, key: str, version: dict[str, int], hash_name: str, value: str) -> None:
        with self._lock:
            entries = self._loaded()
            entry = entries.get(key) if _describes(entries.get(key), version) else version
            entries[key] = {**entry, hash_name: value}
            self._save(key)

    def _loaded(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            self._entries = self._read_disk()
        return self._entries

    def _read_disk(self) -> dict[str, dict[str, Any]]:
        if self.cache_path is None or not self.cache_path.is_file():
            return {}
        try:
            data = json.loads(self.cache_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable hash cache %s: %s", self.cache_path, exc)
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_FORMAT_VERSION:
            return {}
        files = data.get("files")
        return {k: v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}

    def _save(self, changed_key: str) -> None:
        """Write the cache atomically; keeps entries another process added since we read it."""
        if self.cache_path is None:
            return
        entries = self._loaded()
        merged = {**self._read_disk(), **entries}
        entries.update(merged)
        payload = json.dumps({"version": CACHE_FORMAT_VERSION, "files": merged}, indent=1, sort_keys=True)
        temporary = None
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=".hashes-", dir=self.cache_path.parent)
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(payload)
            os.chmod(temporary, 0o644)  # mkstemp makes it private; other users of the volume may read it
            os.replace(temporary, self.cache_path)
        except OSError as exc:
            logger.warning("could not write hash cache %s (%s); %s stays in memory only",
                           self.cache_path, exc, changed_key)
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)


def _describes(entry: dict[str, Any] | None, version: dict[str, int]) -> bool:
    """Whether a cache entry was made for this version of the file (same size and mtime)."""
    return entry is not None and all(entry.get(k) == v for k, v in version.items())


def _file_version(path: Path) -> dict[str, int]:
    """What identifies one version of a file: its size and modification time in nanoseconds."""
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
