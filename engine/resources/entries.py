"""The models a catalog lists, one class per kind, with the names and hashes A1111 gives each."""

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from engine.resources.hashing import HashCache, read_safetensors_metadata


logger = logging.getLogger(__name__)


def strip_extension(name: str) -> str:
    return os.path.splitext(name)[0]


@dataclass(frozen=True)
class CheckpointEntry:
    """A checkpoint file or diffusers folder, with A1111's ids (`sd_models.CheckpointInfo`)."""

    path: Path
    name: str  # relative path with extension, "sub/foo.safetensors" (a diffusers folder: "sub/foo")
    name_for_extra: str  # file stem, "foo"
    model_name: str  # name without extension, "/" -> "_": "sub_foo"
    is_folder: bool
    config: Path | None  # "<stem>.yaml" beside the file, A1111's per-checkpoint LDM config
    hashes: HashCache = field(repr=False, compare=False)

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.name, strip_extension(self.name), self.name_for_extra, self.model_name)

    @property
    def hash(self) -> str | None:
        """Legacy 8-hex hash; None for a diffusers folder, which is not one file."""
        return None if self.is_folder else self.hashes.get(self.path, "model_hash")

    @property
    def sha256(self) -> str | None:
        """Full sha256, computed on first use and cached beside the models; None for a folder."""
        return None if self.is_folder else self.hashes.get(self.path, "sha256")

    @property
    def shorthash(self) -> str | None:
        return self.sha256 and self.sha256[:10]

    @property
    def title(self) -> str:
        """A1111's title: "name [shorthash]" once the sha256 is known, else the bare name."""
        known = None if self.is_folder else self.hashes.peek(self.path, "sha256")
        return f"{self.name} [{known[:10]}]" if known else self.name

    @property
    def short_title(self) -> str:
        """A1111's `short_title` (infotext `Refiner`, `Hires checkpoint`): "stem [shorthash]", or the stem."""
        return f"{self.name_for_extra} [{self.shorthash}]" if self.shorthash else self.name_for_extra

    def matches_hash(self, wanted: str, compute: bool = True) -> bool:
        """Whether `wanted` is this file's old 8-hex hash, 10-hex shorthash or full sha256."""
        wanted = wanted.lower()
        if self.is_folder:
            return False
        if len(wanted) == 8:
            return self.hash == wanted
        sha256 = self.sha256 if compute else self.hashes.peek(self.path, "sha256")
        return sha256 is not None and wanted in (sha256, sha256[:10])


@dataclass(frozen=True)
class VaeEntry:
    """A VAE file (or diffusers VAE folder); A1111 names it by its file name with extension."""

    path: Path
    name: str  # "sdxl_vae.safetensors"
    relative: str  # path under its folder, "sub/sdxl_vae.safetensors"
    is_folder: bool
    hashes: HashCache = field(repr=False, compare=False)

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.name, self.relative, strip_extension(self.name))

    @property
    def shorthash(self) -> str | None:
        """sha256[:10], A1111's infotext "VAE hash"; None for a folder."""
        return None if self.is_folder else self.hashes.get(self.path, "sha256")[:10]


@dataclass(frozen=True)
class LoraEntry:
    """A LoRA (or LyCORIS) file; A1111 names it by its stem or the `ss_output_name` it was trained as."""

    path: Path
    name: str  # stem, what `<lora:name:1>` uses
    relative: str  # path under its folder without extension
    hashes: HashCache = field(repr=False, compare=False)

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.name, self.relative)

    @cached_property
    def metadata(self) -> dict[str, Any]:
        if self.path.suffix.lower() != ".safetensors":
            return {}
        try:
            return read_safetensors_metadata(self.path)
        except (OSError, ValueError) as exc:
            logger.warning("cannot read LoRA metadata of %s: %s", self.path, exc)
            return {}

    @property
    def alias(self) -> str:
        return str(self.metadata.get("ss_output_name") or self.name)

    @property
    def hash(self) -> str:
        """A1111 `NetworkOnDisk` hash: trainer-written sshs_model_hash, else addnet hash (safetensors) or sha256."""
        kind = "addnet" if self.path.suffix.lower() == ".safetensors" else "sha256"
        return str(self.metadata.get("sshs_model_hash") or self.hashes.get(self.path, kind))

    @property
    def shorthash(self) -> str:
        return self.hash[:12]


@dataclass(frozen=True)
class ControlNetEntry:
    """A ControlNet (or IP-Adapter) model, titled "stem [old hash]" as sd-webui-controlnet lists it."""

    path: Path
    name: str  # stem (a diffusers folder: its name)
    relative: str  # path under the ControlNet folder
    is_folder: bool
    hashes: HashCache = field(repr=False, compare=False)

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.name.lower(), self.relative.lower(), self.path.name.lower())

    @property
    def weights(self) -> Path | None:
        """The file whose hash stands for the model: itself, or a diffusers folder's weights file."""
        if not self.is_folder:
            return self.path
        return first(sorted(self.path.glob("diffusion_pytorch_model*.safetensors"))
                      or sorted(self.path.glob("diffusion_pytorch_model*.bin")))

    @property
    def hash(self) -> str | None:
        weights = self.weights
        return self.hashes.get(weights, "model_hash") if weights else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.hash}]"

    def matches_hash(self, wanted: str) -> bool:
        """The old 8-hex hash; a longer sha256 id matches only when already cached (never hashes gigabytes)."""
        weights = self.weights
        if len(wanted) == 8 or weights is None:
            return self.hash == wanted
        known = self.hashes.peek(weights, "sha256")
        return known is not None and wanted in (known, known[:10])


@dataclass(frozen=True)
class ModelFile:
    """A model of a kind named by file (embeddings, upscalers, detectors, insightface packs)."""

    kind: str
    path: Path
    name: str  # path under its folder, with extension ("face_yolov8n.pt"; a pack folder: "models/antelopev2")
    stem: str
    hashes: HashCache = field(repr=False, compare=False)

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.name, self.path.name, strip_extension(self.name), self.stem)

    @property
    def sha256(self) -> str | None:
        return None if self.path.is_dir() else self.hashes.get(self.path, "sha256")


class ControlNetMatch(NamedTuple):
    """A resolved ControlNet; `hash_matched` is None when the name carried no "[hash]"."""

    entry: ControlNetEntry
    hash_matched: bool | None


def first(items: Sequence[Any]) -> Any:
    return items[0] if items else None
