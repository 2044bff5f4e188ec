"""What stays loaded: small LRU caches by count, and checkpoints by memory budget with shared components."""

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch


logger = logging.getLogger(__name__)

Key = TypeVar("Key")
Value = TypeVar("Value")

GIB = 1 << 30
# Elements sampled per tensor when fingerprinting a module: fine-tuned weights differ almost everywhere, so
# an evenly spaced sample tells most different tensors apart in milliseconds. A few changed rows (a textual
# inversion merged into the token embedding, a patched VAE) can fall between the samples, so a matching
# fingerprint only names a candidate: components are shared once every tensor compares equal.
FINGERPRINT_SAMPLES = 4096
# Left free for activations when the budget is derived from the device (an SDXL 1024² pass peaks near 5 GiB).
ACTIVATION_RESERVE = 6 * GIB
SAFETENSORS_ITEM_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


class ResidentCache(Generic[Key, Value]):
    """An LRU of loaded models holding at most `capacity` entries; loads happen outside the lock's
    fast path only once per key."""

    def __init__(self, load: Callable[[Key], Value], capacity: int = 1):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._load = load
        self._capacity = capacity
        self._entries: OrderedDict[Key, Value] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key) -> Value:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            while len(self._entries) >= self._capacity:
                evicted, _ = self._entries.popitem(last=False)
                logger.info("evicting %s", evicted)
            value = self._load(key)
            self._entries[key] = value
            return value

    def resident(self) -> list[Key]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclass
class _Resident:
    pipeline: Any
    modules: dict[str, torch.nn.Module]  # component name → module (possibly shared with other residents)


class PipelineCache(Generic[Key]):
    """Loaded checkpoints kept within a memory budget, least recently used evicted first.

    Components whose weights are identical across checkpoints (the same VAE file, the same text encoders) are
    loaded once: after each load, every `torch.nn.Module` component is fingerprinted (class, config, tensor
    names, shapes, dtypes and a strided sample of every tensor); a resident module with the same fingerprint
    replaces it only when all their tensors are exactly equal (`identical`). Sizes are measured from parameters and buffers; a module shared by several checkpoints
    counts once. Thread-safe; a load holds the lock (generation is serialised anyway).
    """

    def __init__(
        self,
        load: Callable[[Key], Any],
        budget_bytes: int | None,
        estimate: Callable[[Key], int] | None = None,
    ):
        """Args:
        load: builds the pipeline for a key (its components are read from `pipeline.components`).
        budget_bytes: bytes all resident checkpoints may take together; None: no limit.
        estimate: the bytes a key will take once loaded, so room is made *before* loading (peak memory); when
            None, eviction happens only after the load is measured.
        """
        if budget_bytes is not None and budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        self._load = load
        self.budget_bytes = budget_bytes
        self._estimate = estimate
        self._entries: OrderedDict[Key, _Resident] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key) -> Any:
        """The loaded pipeline for `key`, loading it (and evicting others) when it is not resident."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key].pipeline
            if self._estimate is not None:
                self._evict_until_free(self._estimate(key), keep=None)
            pipeline = self._load(key)
            self._entries[key] = _Resident(pipeline, self._share_components(key, pipeline))
            self._evict_until_free(0, keep=key)
            used = self._used_bytes()
            if self.budget_bytes is not None and used > self.budget_bytes:
                logger.warning(
                    "%s alone takes %.2f GiB, above the model memory budget of %.2f GiB",
                    key,
                    used / GIB,
                    self.budget_bytes / GIB,
                )
            return pipeline

    def resident(self) -> list[Key]:
        """Resident keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def used_bytes(self) -> int:
        with self._lock:
            return self._used_bytes()

    def describe(self) -> dict[str, Any]:
        """Budget, bytes in use, and what is resident (for logs and the memory endpoint)."""
        with self._lock:
            shared = _count_shared(self._entries.values())
            return {
                "budget": self.budget_bytes,
                "used": self._used_bytes(),
                "resident": [str(key) for key in self._entries],
                "shared_components": shared,
            }

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
        release_device_memory()

    def _evict_until_free(self, needed: int, keep: Key | None) -> None:
        if self.budget_bytes is None:
            return
        evicted = []
        while self._used_bytes() + needed > self.budget_bytes:
            victim = next((key for key in self._entries if key != keep), None)
            if victim is None:
                break
            del self._entries[victim]
            evicted.append(victim)
            logger.info("evicting %s to stay within the model memory budget", victim)
        if evicted:
            release_device_memory()

    def _used_bytes(self) -> int:
        unique = {id(module): module for entry in self._entries.values() for module in entry.modules.values()}
        return sum(module_bytes(module) for module in unique.values())

    def _share_components(self, key: Key, pipeline: Any) -> dict[str, torch.nn.Module]:
        """Swap each component for an identical resident one; returns the pipeline's modules by name."""
        candidates: dict[str, dict[int, torch.nn.Module]] = {}
        for entry in self._entries.values():
            for module in entry.modules.values():
                candidates.setdefault(fingerprint(module), {})[id(module)] = module
        modules = {}
        for name, component in pipeline.components.items():
            if not isinstance(component, torch.nn.Module):
                continue
            same_sample = candidates.get(fingerprint(component), {}).values()
            twin = next((module for module in same_sample if identical(module, component)), None)
            if twin is not None and twin is not component:
                setattr(pipeline, name, twin)
                logger.info("%s: sharing its %s with a resident checkpoint", key, name)
                component = twin
            modules[name] = component
        return modules


def _count_shared(entries: Iterable[_Resident]) -> int:
    """How many resident modules serve more than one checkpoint."""
    counts: dict[int, int] = {}
    for entry in entries:
        for module in entry.modules.values():
            counts[id(module)] = counts.get(id(module), 0) + 1
    return sum(1 for count in counts.values() if count > 1)


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (each shared tensor counted once)."""
    tensors = {tensor.data_ptr(): tensor for tensor in (*module.parameters(), *module.buffers())}
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())


@torch.no_grad()
def fingerprint(module: torch.nn.Module) -> str:
    """A cheap identity of a module's weights and configuration (see `PipelineCache`); cached on the module,
    since cached modules are never modified outside a request that restores them."""
    known = getattr(module, "_cache_fingerprint", None)
    if known is not None:
        return known
    digest = hashlib.sha256(type(module).__qualname__.encode())
    digest.update(_config_text(module).encode())
    samples = []
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // FINGERPRINT_SAMPLES)
        samples.append(torch.cat([flat[::step], flat[-1:]]).contiguous().view(torch.uint8))
    if samples:
        digest.update(torch.cat(samples).cpu().numpy().tobytes())
    value = digest.hexdigest()
    module._cache_fingerprint = value
    return value


@torch.no_grad()
def identical(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    """Whether two modules hold exactly the same weights: the same class and configuration, and every
    parameter and buffer equal in name, dtype, shape and value (run only on fingerprint matches, which are
    rare and usually true, so the full comparison is paid only where sharing saves a whole component)."""
    if first is second:
        return True
    if type(first) is not type(second) or _config_text(first) != _config_text(second):
        return False
    tensors = dict((*first.named_parameters(), *first.named_buffers()))
    others = dict((*second.named_parameters(), *second.named_buffers()))
    if tensors.keys() != others.keys():
        return False
    return all(
        tensors[name].dtype == others[name].dtype
        and tensors[name].device == others[name].device
        and torch.equal(tensors[name], others[name])
        for name in tensors
    )


def _config_text(module: torch.nn.Module) -> str:
    """The module's configuration without bookkeeping keys (`_name_or_path`, versions), which differ between
    loads of identical weights."""
    config = getattr(module, "config", None)
    if config is None:
        return ""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    kept = {
        key: value
        for key, value in values.items()
        if not key.startswith("_") and not key.endswith("_version")
    }
    return json.dumps(kept, sort_keys=True, default=str)


def release_device_memory() -> None:
    """Hand memory freed by evictions back to the CUDA driver, so `nvidia-smi` and the next load see it."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resolve_budget(budget_gb: float | None, device: torch.device) -> int:
    """The model memory budget in bytes: `budget_gb` (e.g. `MODEL_MEMORY_BUDGET_GB`) when given, else from the
    device: all but an activation reserve of GPU memory (at least half of it), or half of the RAM on CPU."""
    if budget_gb is not None:
        if budget_gb <= 0:
            raise ValueError(f"MODEL_MEMORY_BUDGET_GB must be positive, got {budget_gb}")
        return int(budget_gb * GIB)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return max(total // 2, total - ACTIVATION_RESERVE)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def estimate_checkpoint_bytes(path: Path, dtype: torch.dtype) -> int:
    """Bytes a checkpoint's weights take once loaded as `dtype`, from its safetensors headers alone.

    A single file counts every tensor in it (EMA copies too, so the estimate errs high); a diffusers folder
    counts the `.safetensors` files in its component folders, a tensor stored in two variants (fp16 and full)
    once. Integer tensors keep their stored size; buffers a model makes itself (position ids) are not counted.
    """
    files = sorted(path.glob("*/*.safetensors")) if path.is_dir() else [path]
    item_bytes = torch.empty((), dtype=dtype).element_size()
    tensors: dict[tuple[Path, str], int] = {}
    for file in files:
        for name, entry in _safetensors_header(file).items():
            if not isinstance(entry, dict) or "shape" not in entry:
                continue
            count = 1
            for size in entry["shape"]:
                count *= size
            stored = entry.get("dtype", "F32")
            floating = stored.startswith(("F", "BF"))
            tensors[(file.parent, name)] = count * (
                item_bytes if floating else SAFETENSORS_ITEM_BYTES.get(stored, 4)
            )
    return sum(tensors.values())


def _safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as stream:
        length = int.from_bytes(stream.read(8), "little")
        return json.loads(stream.read(length))
