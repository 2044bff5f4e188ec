"""What the models folder holds, in A1111's layout, and the names and hashes A1111 gives each model."""

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, NoReturn

from engine.errors import NotFoundError, choices
from engine.resources.entries import (
    CheckpointEntry,
    ControlNetEntry,
    ControlNetMatch,
    LoraEntry,
    ModelFile,
    VaeEntry,
    first,
    strip_extension,
)
from engine.resources.hashing import HashCache
from engine.resources.name_matching import (
    match_checkpoint,
    match_controlnet,
    natural_key,
    normalise_name,
    with_alias,
)


logger = logging.getLogger(__name__)

DEFAULT_CACHE_NAME = ".model-hashes.json"
RUNPOD_VOLUME = Path("/runpod-volume")
# Where an A1111 install on a RunPod network volume keeps its models folder, most common first.
VOLUME_MODEL_DIRS = (
    "stable-diffusion-webui/models",  # ashleykleynhans/runpod-worker-a1111: the volume is the pod's /workspace
    "workspace/stable-diffusion-webui/models",  # a whole pod /workspace copied onto the volume
    "stable-diffusion-webui-forge/models",  # Forge keeps A1111's layout
    "models",  # a bare A1111 models folder at the volume root
)


def _holds(marker: str) -> Callable[[Path], bool]:
    return lambda folder: (folder / marker).is_file()


def _holds_onnx(folder: Path) -> bool:
    return any(folder.glob("*.onnx"))


@dataclass(frozen=True)
class Layout:
    """Folders (relative to the models root) holding one kind of model, and which files there count."""

    folders: tuple[str, ...]
    endings: tuple[str, ...]  # lower-case file name endings
    is_bundle: Callable[[Path], bool] | None = None  # a folder that is one model (diffusers layout)
    excluded_endings: tuple[str, ...] = ()


LAYOUTS: dict[str, tuple[Layout, ...]] = {
    # A1111 sd_models.list_models (.ckpt/.safetensors minus *.vae.*); diffusers folders are our addition.
    "checkpoints": (Layout(("Stable-diffusion",), (".safetensors", ".ckpt"), _holds("model_index.json"),
                           (".vae.safetensors", ".vae.ckpt")),),
    # A1111 sd_vae.refresh_vae_list: models/VAE, plus `*.vae.*` files among the checkpoints.
    "vae": (Layout(("VAE",), (".safetensors", ".ckpt", ".pt"), _holds("config.json")),
            Layout(("Stable-diffusion",), (".vae.safetensors", ".vae.ckpt", ".vae.pt"))),
    # A1111's built-in Lora extension; LyCORIS is where the old lycoris extension kept its files.
    "lora": (Layout(("Lora", "LyCORIS"), (".safetensors", ".ckpt", ".pt")),),
    # A1111 keeps embeddings beside models/ (webui/embeddings); a folder inside models/ is accepted too.
    "embeddings": (Layout(("../embeddings", "embeddings"), (".safetensors", ".pt", ".bin")),),
    "esrgan": (Layout(("ESRGAN",), (".pth", ".pt", ".safetensors")),),
    "realesrgan": (Layout(("RealESRGAN",), (".pth", ".pt", ".safetensors")),),
    "adetailer": (Layout(("adetailer",), (".pt",)),),
    # sd-webui-controlnet CN_MODEL_EXTS; a diffusers ControlNet folder (config.json) is one model.
    "controlnet": (Layout(("ControlNet",), (".safetensors", ".pth", ".pt", ".ckpt", ".bin"), _holds("config.json")),),
    # insightface packs (insightface/models/antelopev2/*.onnx) and loose files (insightface/inswapper_128.onnx).
    "insightface": (Layout(("insightface",), (".onnx",), _holds_onnx),),
    # A1111's face restorers; models/GFPGAN also holds facexlib's face detection and parsing weights.
    "codeformer": (Layout(("Codeformer",), (".pth", ".safetensors")),),
    "gfpgan": (Layout(("GFPGAN",), (".pth", ".safetensors")),),
}
KIND_NOUNS = {"checkpoints": "checkpoint", "vae": "VAE", "lora": "LoRA", "embeddings": "embedding",
              "esrgan": "ESRGAN model", "realesrgan": "RealESRGAN model", "adetailer": "ADetailer model",
              "controlnet": "ControlNet model", "insightface": "insightface model",
              "codeformer": "CodeFormer model", "gfpgan": "GFPGAN folder file"}
# How `describe()` shows each kind: A1111's titles where it has them.
DISPLAY_NAME: dict[str, Callable[[Any], str]] = {"checkpoints": attrgetter("title"),
                                                 "controlnet": attrgetter("title")}



def locate_models_root(env: Mapping[str, str], default: Path, volume_root: Path = RUNPOD_VOLUME) -> Path:
    """The models root: `MODELS_DIR`, else an A1111 install on a RunPod network volume, else `default`.

    Args:
        env: environment variables (pass `os.environ`).
        default: the worker's own models folder (baked into the image).
        volume_root: where RunPod mounts a network volume on serverless workers.
    """
    configured = env.get("MODELS_DIR", "").strip()
    if configured:
        return Path(configured).expanduser()
    for relative in VOLUME_MODEL_DIRS:
        candidate = volume_root / relative
        if (candidate / "Stable-diffusion").is_dir():
            logger.info("using the A1111 models folder on the network volume: %s", candidate)
            return candidate
    return default


class ModelCatalog:
    """Lazy, refreshable listings of every model kind under an A1111 `models/` folder, with A1111's names.

    Listings are built on first use and kept until `refresh()`; a lookup that misses rescans its kind once,
    so files copied in while the worker runs are found (A1111 needs an explicit refresh call).
    """

    def __init__(self, root: Path, cache_path: Path | None = None):
        self.root = Path(root).absolute()
        self.hashes = HashCache(cache_path or self.root / DEFAULT_CACHE_NAME, self.root)
        self._lock = threading.Lock()
        self._listings: dict[str, tuple] = {}
        self._builders: dict[str, Callable[[], list]] = {
            "checkpoints": self._build_checkpoints,
            "vae": self._build_vaes,
            "lora": self._build_loras,
            "controlnet": self._build_controlnets,
        }

    def folders(self, kind: str) -> list[Path]:
        """The existing folders that hold models of `kind`."""
        found = dict.fromkeys(self._folder(name) for layout in _layouts(kind) for name in layout.folders)
        return [folder for folder in found if folder.is_dir()]

    def entries(self, kind: str) -> tuple:
        """Every model of `kind` (a key of LAYOUTS), listed on first use."""
        _layouts(kind)
        with self._lock:
            if kind not in self._listings:
                build = self._builders.get(kind, lambda: self._build_files(kind))
                self._listings[kind] = tuple(build())
            return self._listings[kind]

    def refresh(self, kind: str | None = None) -> None:
        """Forget the listing of `kind` (all kinds when None); the next use rescans the disk."""
        if kind is not None:
            _layouts(kind)
        with self._lock:
            if kind is None:
                self._listings.clear()
            else:
                self._listings.pop(kind, None)

    def checkpoints(self) -> tuple[CheckpointEntry, ...]:
        return self.entries("checkpoints")

    def vaes(self) -> tuple[VaeEntry, ...]:
        return self.entries("vae")

    def loras(self) -> tuple[LoraEntry, ...]:
        return self.entries("lora")

    def controlnets(self) -> tuple[ControlNetEntry, ...]:
        return self.entries("controlnet")

    def find_checkpoint(self, name: str, field: str = "sd_model_checkpoint", closest: bool = False) -> CheckpointEntry:
        """Resolve a checkpoint the way A1111 does (`CheckpointInfo.ids`).

        Accepts the relative path with extension, the stem, `model_name`, "name [hash]" titles with the
        10-hex short sha256 or the old 8-hex hash, and bare hashes. With `closest`, falls back to A1111's
        `get_closet_checkpoint_match` (shortest title containing the text), as used for `hr_checkpoint_name`.
        """
        query = normalise_name(name)
        found = self._lookup("checkpoints", lambda entries: match_checkpoint(entries, query, closest))
        return found or self._not_found("checkpoints", name, field, [e.title for e in self.checkpoints()])

    def find_vae(self, name: str, field: str = "sd_vae") -> VaeEntry:
        """Resolve a VAE by file name with extension (A1111's `vae_dict` key), relative path or stem."""
        query = normalise_name(name)
        found = self._lookup("vae", lambda entries: first(with_alias(entries, query)))
        return found or self._not_found("vae", name, field, [e.name for e in self.vaes()])

    def find_lora(self, name: str, field: str = "lora") -> LoraEntry:
        """Resolve a LoRA by stem (A1111's network name), relative path, or its `ss_output_name` alias."""
        query = normalise_name(name)

        def match(entries: Sequence[LoraEntry]) -> LoraEntry | None:
            return first(with_alias(entries, query)) or next((e for e in entries if e.alias == query), None)

        found = self._lookup("lora", match)
        return found or self._not_found("lora", name, field, [e.name for e in self.loras()])

    def find_controlnet(self, name: str, field: str = "controlnet.model") -> ControlNetMatch:
        """Resolve a ControlNet model name "stem [hash]" as sd-webui-controlnet lists it.

        Order: the stem with a matching hash, then any model with that hash (a renamed file), then the stem
        alone (the hash differs: `hash_matched` is False), then the shortest stem containing the text.
        """
        query = normalise_name(name)
        found = self._lookup("controlnet", lambda entries: match_controlnet(entries, query))
        return found or self._not_found("controlnet", name, field, [e.title for e in self.controlnets()])

    def find_file(self, kind: str, name: str, field: str | None = None) -> ModelFile:
        """Resolve a model of a file kind (embeddings, esrgan, adetailer...) by path, file name or stem."""
        query = normalise_name(name)
        found = self._lookup(kind, lambda entries: first(with_alias(entries, query)))
        return found or self._not_found(kind, name, field or kind, [e.name for e in self.entries(kind)])

    def vae_near_checkpoint(self, checkpoint: CheckpointEntry) -> VaeEntry | None:
        """A1111's "Automatic" VAE: the first VAE whose file name starts with the checkpoint's base name."""
        prefix = checkpoint.path.name if checkpoint.is_folder else checkpoint.path.name.rsplit(".", 1)[0]
        return next((vae for vae in self.vaes() if vae.path.name.startswith(prefix)), None)

    def describe(self) -> dict[str, Any]:
        """A summary per kind (folders searched, model names) for `python -m engine models`."""
        models = {
            kind: {"folders": [str(f) for f in self.folders(kind)],
                   "names": [DISPLAY_NAME.get(kind, attrgetter("name"))(e) for e in self.entries(kind)]}
            for kind in LAYOUTS
        }
        return {"root": str(self.root), "models": models}

    def _folder(self, relative: str) -> Path:
        # normpath turns "<root>/../embeddings" into the webui's embeddings folder.
        return Path(os.path.normpath(self.root / relative))

    def _lookup(self, kind: str, match: Callable[[tuple], Any]) -> Any:
        found = match(self.entries(kind))
        if found is None:
            self.refresh(kind)
            found = match(self.entries(kind))
        return found

    def _not_found(self, kind: str, name: str, field: str, available: Iterable[str]) -> NoReturn:
        expected = "/".join(dict.fromkeys(folder for layout in _layouts(kind) for folder in layout.folders))
        # Folders relative to the models folder: a client must not learn the server's paths.
        relative = (os.path.relpath(folder, self.root) for folder in self.folders(kind))
        searched = ", ".join(f"{folder}/" for folder in relative) or f"no {expected} in the models folder"
        raise NotFoundError(field, f"no {KIND_NOUNS[kind]} named {name!r} (searched {searched}); "
                                   f"available: {choices(available)}")

    def _scan_kind(self, kind: str) -> list[tuple[Path, Path, bool]]:
        """(folder, path, is_bundle) for every model of `kind` in each of its folders."""
        return [(folder, path, is_bundle)
                for layout in _layouts(kind)
                for folder in map(self._folder, layout.folders)
                for path, is_bundle in _scan(folder, layout)]

    def _build_checkpoints(self) -> list[CheckpointEntry]:
        entries = []
        for folder, path, is_folder in self._scan_kind("checkpoints"):
            name = path.relative_to(folder).as_posix()
            config = path.with_suffix(".yaml")
            entries.append(CheckpointEntry(
                path=path, name=name,
                name_for_extra=path.name if is_folder else strip_extension(path.name),
                model_name=name.replace("/", "_") if is_folder else strip_extension(name.replace("/", "_")),
                is_folder=is_folder, config=config if not is_folder and config.is_file() else None,
                hashes=self.hashes))
        return sorted(entries, key=lambda e: natural_key(e.name))

    def _build_vaes(self) -> list[VaeEntry]:
        found = self._scan_kind("vae")
        entries = [VaeEntry(path=path, name=path.name, relative=path.relative_to(folder).as_posix(),
                            is_folder=is_folder, hashes=self.hashes) for folder, path, is_folder in found]
        return sorted(entries, key=lambda e: natural_key(e.name))

    def _build_loras(self) -> list[LoraEntry]:
        return [LoraEntry(path=path, name=strip_extension(path.name),
                          relative=strip_extension(path.relative_to(folder).as_posix()), hashes=self.hashes)
                for folder, path, _ in self._scan_kind("lora")]

    def _build_controlnets(self) -> list[ControlNetEntry]:
        entries = [ControlNetEntry(path=path, name=path.name if is_folder else strip_extension(path.name),
                                   relative=path.relative_to(folder).as_posix(), is_folder=is_folder,
                                   hashes=self.hashes)
                   for folder, path, is_folder in self._scan_kind("controlnet")]
        # sd-webui-controlnet never lists a file named "None": that name means "no model".
        return sorted((e for e in entries if e.name != "None"), key=lambda e: e.path.name)

    def _build_files(self, kind: str) -> list[ModelFile]:
        return [ModelFile(kind=kind, path=path, name=path.relative_to(folder).as_posix(),
                          stem=path.name if is_bundle else strip_extension(path.name), hashes=self.hashes)
                for folder, path, is_bundle in self._scan_kind(kind)]


def _layouts(kind: str) -> tuple[Layout, ...]:
    if kind not in LAYOUTS:
        raise NotFoundError("kind", f"unknown model kind {kind!r}; known: {choices(LAYOUTS)}")
    return LAYOUTS[kind]


def _scan(folder: Path, layout: Layout) -> list[tuple[Path, bool]]:
    """(path, is_bundle) of every model under `folder`; a bundle folder is one model, not descended into."""
    found: list[tuple[Path, bool]] = []
    for directory, subfolders, files in os.walk(folder, followlinks=True):
        here = Path(directory)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        if layout.is_bundle is not None:
            bundles = [name for name in subfolders if layout.is_bundle(here / name)]
            found += [(here / name, True) for name in bundles]
            subfolders[:] = [name for name in subfolders if name not in bundles]
        found += [(here / name, False) for name in sorted(files) if _counts(name.lower(), layout)]
    return found


def _counts(file_name: str, layout: Layout) -> bool:
    return file_name.endswith(layout.endings) and not file_name.endswith(layout.excluded_endings or ("\0",))
