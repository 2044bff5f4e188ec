"""A1111's face restorers by name ("CodeFormer", "GFPGAN"): which files in the models folder they use, how each
network is called, and the loaded networks, kept for the next request.

Any feature that restores faces asks `FaceRestorers.get(name)` for a `FaceRestorer` and calls
`restore(image, weight, seed)`: txt2img/img2img's `restore_faces`, ADetailer's `ad_restore_face`, a face swapper.
"""

import importlib.util
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from engine.errors import NotFoundError, choices
from engine.resources.cache import ResidentCache
from engine.resources.catalog import ModelCatalog
from engine.resources.model_files import load_listed
from engine.resources.name_matching import natural_key


logger = logging.getLogger(__name__)

# A1111's `code_former_weight` option default (0 = strongest restoration, 1 = closest to the input).
DEFAULT_CODEFORMER_WEIGHT = 0.5
# Where A1111 keeps facexlib's detection and parsing weights (`patch_facexlib(models/GFPGAN)`).
FACE_MODELS_KIND = "gfpgan"


@dataclass(frozen=True)
class RestorerModel:
    """One of A1111's face restorers.

    Attributes:
        kind: the catalog kind (models folder) holding its weights.
        architecture: spandrel's architecture id the file must have.
        download_name: the file A1111 downloads (preferred when several are present).
        name_filter: only files whose name contains this count (A1111's GFPGAN folder also holds facexlib's).
        call: how A1111 calls the network on one face: (net, face, weight) → restored face.
        package: the package providing the architecture, when spandrel itself does not.
    """

    kind: str
    architecture: str
    download_name: str
    name_filter: str
    call: Callable[[Any, torch.Tensor, float], torch.Tensor]
    package: str | None = None

    @property
    def available(self) -> bool:
        return self.package is None or importlib.util.find_spec(self.package) is not None


# A1111 v1.10 `codeformer_model.py` / `gfpgan_model.py`, in the order A1111 registers them. CodeFormer takes the
# fidelity weight (`weight=w`, since A1111 v1.9); GFPGAN has none.
RESTORER_MODELS: dict[str, RestorerModel] = {
    "CodeFormer": RestorerModel(
        "codeformer", "CodeFormer", "codeformer-v0.1.0.pth", "",
        lambda net, face, weight: net(face, weight=weight, adain=True)[0],
        package="spandrel_extra_arches",  # its CodeFormer code is under the non-commercial S-Lab License
    ),
    "GFPGAN": RestorerModel(
        "gfpgan", "GFPGAN", "GFPGANv1.4.pth", "GFPGAN",
        lambda net, face, weight: net(face, return_rgb=False)[0],
    ),
}


@dataclass(frozen=True)
class FaceRestorer:
    """A loaded restorer: `restore(image)` finds the faces, restores each and pastes them back."""

    name: str
    path: Path
    net: Any = field(repr=False)  # the spandrel descriptor
    face_models: Any = field(repr=False)  # engine.restore.face_models.FaceModels
    lock: threading.Lock = field(repr=False, compare=False)

    def restore(self, image: Image.Image, weight: float | None = None, seed: int = 0) -> Image.Image:
        """`image` with every detected face restored (unchanged when none is found).

        Args:
            weight: CodeFormer's fidelity, 0 (strongest) to 1 (closest to the input); None = A1111's 0.5.
                GFPGAN has no such weight and ignores it.
            seed: seeds GFPGAN's noise inputs, which A1111 draws from the global RNG.
        """
        return self.restore_faces(image, weight, seed).image

    def restore_faces(self, image: Image.Image, weight: float | None = None, seed: int = 0):
        """Like `restore`, also telling where each restored face is (an `engine.restore.helper.Restoration`)."""
        from engine.restore.helper import restore_with_face_helper

        weight = DEFAULT_CODEFORMER_WEIGHT if weight is None else weight
        call = RESTORER_MODELS[self.name].call
        device = self.face_models.device
        with self.lock, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return restore_with_face_helper(image, self.face_models, lambda face: call(self.net.model, face, weight))


class FaceRestorers:
    """The restorers installed in a models folder, loaded on first use; one instance per engine."""

    def __init__(self, catalog: ModelCatalog, device: torch.device | str):
        self.catalog = catalog
        self.device = torch.device(device)
        self._nets: ResidentCache[tuple[str, Path], Any] = ResidentCache(self._load_net, len(RESTORER_MODELS))
        self._face_models: ResidentCache[tuple[Path, Path], Any] = ResidentCache(self._load_face_models)
        self._lock = threading.Lock()  # the detector keeps per-call state: one restoration at a time

    def get(self, name: str, field: str = "face restorer") -> FaceRestorer:
        """The restorer A1111 calls `name`, loaded (once; kept for the next call).

        Raises:
            NotFoundError: see `resolve`.
        """
        weights, face_model_files = self.resolve(name, field)
        net = self._nets.get((name, weights))
        return FaceRestorer(name, weights, net, self._face_models.get(face_model_files), self._lock)

    def resolve(self, name: str, field: str = "face restorer") -> tuple[Path, tuple[Path, Path]]:
        """The files restorer `name` needs: its weights, and the face detector's and parser's.

        Raises:
            NotFoundError: no such restorer, or a file is missing; `field` names the request field.
        """
        if name not in RESTORER_MODELS:
            raise NotFoundError(field, f"no face restorer named {name!r}; installed: {choices(self.installed())}")
        if not RESTORER_MODELS[name].available:
            raise NotFoundError(field, f"face restorer {name!r} needs the {RESTORER_MODELS[name].package} package, "
                                       f"which is not installed; installed: {choices(self.installed())}")
        weights = self._weights(name) or self._rescanned(name, self._weights)
        if weights is None:
            model = RESTORER_MODELS[name]
            folder = self.catalog.root / self._folder(model.kind)
            raise NotFoundError(field, f"face restorer {name!r} needs its weights ({model.download_name}) in "
                                       f"{folder} (`python download_models.py --only {name.lower()}`); "
                                       f"installed: {choices(self.installed())}")
        helper_files = self._face_model_files() or self._rescanned(name, lambda _: self._face_model_files())
        if helper_files is None:
            raise NotFoundError(field, f"face restoration needs {_helper_file_names()} in "
                                       f"{self.catalog.root / self._folder(FACE_MODELS_KIND)} "
                                       f"(`python download_models.py --only face-restoration`)")
        return weights, helper_files

    def installed(self) -> list[str]:
        """Restorers whose weights and the face detection/parsing weights are all present, in A1111's order."""
        if self._face_model_files() is None:
            return []
        return [name for name, model in RESTORER_MODELS.items()
                if model.available and self._weights(name) is not None]

    def listing(self) -> list[dict[str, Any]]:
        """`GET /sdapi/v1/face-restorers`: `{name, cmd_dir}` per installed restorer (its weights' folder)."""
        return [{"name": name, "cmd_dir": str(self._weights(name).parent)} for name in self.installed()]

    def _weights(self, name: str) -> Path | None:
        """A1111's choice among the folder's files: its own download name, else the first that passes the name
        filter (A1111 takes the first its directory walk returns; names are sorted here)."""
        model = RESTORER_MODELS[name]
        entries = [entry for entry in self.catalog.entries(model.kind) if model.name_filter in entry.path.name]
        preferred = [entry for entry in entries if entry.path.name == model.download_name]
        ordered = preferred + sorted(entries, key=lambda entry: natural_key(entry.name))
        return ordered[0].path if ordered else None

    def _face_model_files(self) -> tuple[Path, Path] | None:
        from engine.restore.face_models import DETECTOR_FILE, PARSER_FILE

        found = {entry.path.name: entry.path for entry in self.catalog.entries(FACE_MODELS_KIND)}
        if DETECTOR_FILE in found and PARSER_FILE in found:
            return found[DETECTOR_FILE], found[PARSER_FILE]
        return None

    def _rescanned(self, name: str, lookup: Callable[[str], Any]) -> Any:
        """Look again after rescanning the folders: files copied in while the worker runs are found."""
        self.catalog.refresh(RESTORER_MODELS[name].kind)
        self.catalog.refresh(FACE_MODELS_KIND)
        return lookup(name)

    def _folder(self, kind: str) -> str:
        from engine.resources.catalog import LAYOUTS

        return LAYOUTS[kind][0].folders[0]

    def _load_net(self, key: tuple[str, Path]):
        from engine.restore.networks import load_restoration_net

        name, path = key
        architecture = RESTORER_MODELS[name].architecture
        # A damaged or vanished file is one clear error naming it.
        return load_listed(self.catalog, path, name, lambda: load_restoration_net(path, architecture, self.device))

    def _load_face_models(self, key: tuple[Path, Path]):
        from engine.restore.face_models import FaceModels, load_face_detector, load_face_parser

        detector_path, parser_path = key
        detector = load_listed(self.catalog, detector_path, "face detector",
                               lambda: load_face_detector(detector_path, self.device))
        parser = load_listed(self.catalog, parser_path, "face parser",
                             lambda: load_face_parser(parser_path, self.device))
        return FaceModels(detector, parser, self.device)


def _helper_file_names() -> str:
    from engine.restore.face_models import DETECTOR_FILE, PARSER_FILE

    return f"{DETECTOR_FILE} and {PARSER_FILE}"
