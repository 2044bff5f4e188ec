"""The files ReActor uses, found in the models folder as ReActor finds them, and kept loaded between requests:
swap models (`insightface/*.onnx`), the buffalo_l analysis pack and face models (`reactor/faces/*.safetensors`).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import NotFoundError, choices
from engine.faceswap.analysis import BuffaloAnalyser, find_buffalo_l
from engine.faceswap.args import ReactorArgs, field
from engine.faceswap.face_mask import MASK_MODEL_FILE, load_mask_parser
from engine.faceswap.swapper import FACE_MODELS_FOLDER, FaceSwapper
from engine.resources.cache import ResidentCache
from engine.resources.catalog import ModelCatalog
from engine.resources.model_files import load_listed
from engine.resources.name_matching import natural_key


MASK_MODEL_KIND = "gfpgan"  # A1111's `patch_facexlib` saves facexlib's downloads in models/GFPGAN


@dataclass(frozen=True)
class FaceSwapFiles:
    """What one request's ReActor args resolve to."""

    model: Path  # the swap model
    pack: Path  # the buffalo_l folder
    face_model: Path | None  # the source face model, when the source is one
    device_type: str  # "cuda" or "cpu": where onnxruntime runs the models


class FaceSwapModels:
    """Swap models and analysers, loaded on first use and kept (one of each per device)."""

    def __init__(self, catalog: ModelCatalog, device: torch.device | str):
        self.catalog = catalog
        self.device = torch.device(device)
        self._swappers: ResidentCache[tuple[Path, str], FaceSwapper] = ResidentCache(
            lambda key: FaceSwapper(*key), 1
        )
        self._analysers: ResidentCache[tuple[Path, str], BuffaloAnalyser] = ResidentCache(
            lambda key: BuffaloAnalyser(*key), 1
        )
        # A damaged file is one clear error naming it.
        self._mask_parsers: ResidentCache[Path, torch.nn.Module] = ResidentCache(
            lambda path: load_listed(self.catalog, path, field("mask_face"),
                                     lambda: load_mask_parser(path, self.device)), 1
        )

    def swap_models(self) -> dict[str, Path]:
        """ReActor's model list (`GET /reactor/models`): the ONNX files directly in `models/insightface`, by
        file name (the packs' files under `insightface/models/` are not swap models)."""
        files = [entry for entry in self.catalog.entries("insightface")
                 if not entry.path.is_dir() and "/" not in entry.name]
        return {entry.path.name: entry.path for entry in sorted(files, key=lambda entry: natural_key(entry.name))}

    def face_models(self) -> dict[str, Path]:
        """ReActor's face models (`models/reactor/faces/*.safetensors`) by file name."""
        folder = self.catalog.root / FACE_MODELS_FOLDER
        found = sorted(folder.glob("*.safetensors"), key=lambda path: path.name.lower()) if folder.is_dir() else []
        return {path.name: path for path in found}

    def resolve(self, args: ReactorArgs) -> FaceSwapFiles:
        """The files `args` name, checked before any work.

        Raises:
            NotFoundError: an unknown swap model or face model (naming the arg and the installed ones), or no
                buffalo_l pack.
        """
        models = self.swap_models() or self._rescanned()
        # ReActor joins the name onto models/insightface, so clients also send a full path: its file name counts.
        wanted = (args.model or "").replace("\\", "/").rsplit("/", 1)[-1]
        if not models:
            raise NotFoundError(field("model"), "no swap model in the models folder's insightface/ "
                                                "(inswapper_128.onnx: `python download_models.py --only reactor`)")
        if not wanted:
            wanted = next(iter(models))  # ReActor's dropdown defaults to the first model listed
        if wanted not in models:
            raise NotFoundError(field("model"), f"no swap model named {wanted!r} in "
                                                f"the models folder's insightface/; installed: {choices(models)}")
        face_model = None
        if args.face_model is not None:
            face_models = self.face_models()
            name = args.face_model if args.face_model.endswith(".safetensors") else f"{args.face_model}.safetensors"
            if name not in face_models:
                raise NotFoundError(field("face_model"), f"no face model named {args.face_model!r} in "
                                                         f"the models folder's {FACE_MODELS_FOLDER}/; "
                                                         f"installed: {choices(face_models)}")
            face_model = face_models[name]
        # ReActor's "CUDA" runs onnxruntime on the GPU; on a worker without one both mean the CPU.
        device_type = "cuda" if args.device == "CUDA" and self.device.type == "cuda" else "cpu"
        return FaceSwapFiles(models[wanted], find_buffalo_l(self.catalog.root), face_model, device_type)

    def swapper(self, files: FaceSwapFiles) -> FaceSwapper:
        return self._swappers.get((files.model, files.device_type))

    def analyser(self, files: FaceSwapFiles) -> BuffaloAnalyser:
        return self._analysers.get((files.pack, files.device_type))

    def cpu_analyser(self) -> BuffaloAnalyser:
        """The buffalo_l analyser on the CPU (ReActor's default device), for work without a swap (face models).

        Raises:
            NotFoundError: no buffalo_l pack.
        """
        return self._analysers.get((find_buffalo_l(self.catalog.root), "cpu"))

    def mask_parser(self) -> torch.nn.Module:
        """Face mask correction's BiSeNet (`models/GFPGAN/parsing_bisenet.pth`, where A1111 keeps facexlib's
        downloads), loaded once.

        Raises:
            NotFoundError: the file is missing, naming the `mask_face` arg.
        """
        try:
            # The catalog's file lookup rescans the folder once when the file is not listed.
            path = self.catalog.find_file(MASK_MODEL_KIND, MASK_MODEL_FILE, field("mask_face")).path
        except NotFoundError:
            raise NotFoundError(field("mask_face"), f"face mask correction needs facexlib's {MASK_MODEL_FILE} in "
                                                    "the models folder's GFPGAN/; run download_models.py "
                                                    "--only reactor") from None
        return self._mask_parsers.get(path)

    def _rescanned(self) -> dict[str, Path]:
        self.catalog.refresh("insightface")
        return self.swap_models()
