"""Annotator weights: where each preprocessor's files live and how they are loaded, offline.

The layout is sd-webui-controlnet's `annotator/downloads/<folder>/<file>` (`annotator/annotator_path.py`,
each `annotator/*/__init__.py`), looked for in two places:

1. `<models>/ControlNetAnnotators/<folder>/<file>` — what `download_models.py` fills (one models folder holds
   everything, e.g. a RunPod volume);
2. `<models>/../extensions/sd-webui-controlnet/annotator/downloads/<folder>/<file>` — an A1111 install's own
   copy, so an existing web UI folder works as it is.

Nothing is downloaded at run time: a missing file is a `NotFoundError` naming where it was looked for and the
`download_models.py` group that fetches it. Detectors are controlnet_aux's classes (spandrel's LaMa), built with
their `from_pretrained(<local folder>)`, which reads the file from the folder and never the Hub; Depth Anything
runs on transformers' model (`engine.control.maps.depth_anything`), DWPose on onnxruntime
(`engine.control.maps.dwpose`).

OneFormer is the exception to the layout: sd-webui-controlnet's detectron2 checkpoints have no maintained loader,
so its two models are read as SHI-Labs' transformers folders (`engine.control.maps.oneformer`), one folder each
under `oneformer/`.
"""

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import NotFoundError
from engine.resources.cache import ResidentCache


logger = logging.getLogger(__name__)

DOWNLOAD_FOLDER = "ControlNetAnnotators"
# sd-webui-controlnet's file names (`annotator/depth_anything*.py`).
DEPTH_ANYTHING_V1, DEPTH_ANYTHING_V2 = "depth_anything_vitl14.pth", "depth_anything_v2_vitl.safetensors"
DWPOSE_DETECTOR, DWPOSE_WHOLEBODY = "yolox_l.onnx", "dw-ll_ucoco_384.onnx"
ANIME_FACE = "UNet.pth"
MOBILE_SAM = "mobile_sam.pt"
ANIMAL_POSE = "rtmpose-m_simcc-ap10k_pt-aic-coco_210e-256x256-7a041aa1_20230206.onnx"
# A transformers OneFormer folder (shi-labs/oneformer_*_swin_large): model, config and CLIP tokenizer files.
ONEFORMER_FILES = ("config.json", "pytorch_model.bin", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
EXTENSION_FOLDER = Path("..") / "extensions" / "sd-webui-controlnet" / "annotator" / "downloads"


@dataclass(frozen=True)
class Annotator:
    """One family of annotator weights: its folder, the files it needs and how to build the detector."""

    folder: str  # sd-webui-controlnet's folder under annotator/downloads
    files: tuple[str, ...]
    build: Callable[[Path], object]  # folder → detector (on the CPU, eval mode)
    licence: str


def quiet_import(module: str):
    """Import a controlnet_aux submodule without running the package's `__init__`, which imports every
    detector (mediapipe's and segment-anything's included: a mediapipe without `solutions` breaks it, and the
    timm registrations it triggers are noisy). The package is registered bare, its submodules load on demand."""
    import importlib
    import importlib.util
    import sys
    import types

    if "controlnet_aux" not in sys.modules:
        spec = importlib.util.find_spec("controlnet_aux")
        if spec is None:
            raise ImportError("controlnet_aux is not installed (pip install --no-deps -r requirements-nodeps.txt)")
        package = types.ModuleType("controlnet_aux")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["controlnet_aux"] = package
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


def _hed(folder: Path):
    return quiet_import("controlnet_aux.hed").HEDdetector.from_pretrained(folder, filename="ControlNetHED.pth")


def _pidinet(folder: Path):
    return quiet_import("controlnet_aux.pidi").PidiNetDetector.from_pretrained(folder, filename="table5_pidinet.pth")


def _mlsd(folder: Path):
    return quiet_import("controlnet_aux.mlsd").MLSDdetector.from_pretrained(folder,
                                                                             filename="mlsd_large_512_fp32.pth")


def _lineart(folder: Path):
    return quiet_import("controlnet_aux.lineart").LineartDetector.from_pretrained(
        folder, filename="sk_model.pth", coarse_filename="sk_model2.pth")


def _lineart_anime(folder: Path):
    return quiet_import("controlnet_aux.lineart_anime").LineartAnimeDetector.from_pretrained(folder,
                                                                                               filename="netG.pth")


def _openpose(folder: Path):
    return quiet_import("controlnet_aux.open_pose").OpenposeDetector.from_pretrained(
        folder, filename="body_pose_model.pth", hand_filename="hand_pose_model.pth", face_filename="facenet.pth")


def _midas(folder: Path):
    return quiet_import("controlnet_aux.midas").MidasDetector.from_pretrained(
        folder, model_type="dpt_hybrid", filename="dpt_hybrid-midas-501f0c75.pt")


def _zoe(folder: Path):
    return quiet_import("controlnet_aux.zoe").ZoeDetector.from_pretrained(folder, filename="ZoeD_M12_N.pt")


def _leres(folder: Path):
    """controlnet_aux builds LeReS++'s pix2pix options with argparse over `sys.argv`: the worker's own command
    line must not reach it."""
    import sys

    command_line, sys.argv = sys.argv, sys.argv[:1]
    try:
        return quiet_import("controlnet_aux.leres").LeresDetector.from_pretrained(
            folder, filename="res101.pth", pix2pix_filename="latest_net_G.pth")
    finally:
        sys.argv = command_line


def _normal_bae(folder: Path):
    return quiet_import("controlnet_aux.normalbae").NormalBaeDetector.from_pretrained(folder, filename="scannet.pt")


def _depth_anything(folder: Path, file: str, version: int):
    """The original checkpoint (a .pth pickle of tensors or a safetensors file) on transformers' model."""
    from engine.control.maps.depth_anything import DepthAnythingDetector, load_depth_anything

    if file.endswith(".safetensors"):
        from safetensors.torch import load_file

        weights = load_file(folder / file)
    else:
        weights = torch.load(folder / file, map_location="cpu", weights_only=True)
    return DepthAnythingDetector(load_depth_anything(weights, version))


def _oneformer(folder: Path, dataset: str):
    from engine.control.maps.oneformer import load_oneformer

    return load_oneformer(folder, dataset)


def _pose_estimator(folder: Path, pose_file: str, animals: bool = False):
    from engine.control.maps import dwpose

    if animals:
        return dwpose.PoseEstimator(folder / DWPOSE_DETECTOR, folder / pose_file, dwpose.ANIMAL_CLASSES,
                                    dwpose.ANIMAL_INPUT)
    return dwpose.PoseEstimator(folder / DWPOSE_DETECTOR, folder / pose_file)


def _anime_face(folder: Path):
    from engine.control.maps.anime_face import AnimeFaceSegmenter, load_anime_face

    return AnimeFaceSegmenter(load_anime_face(torch.load(folder / ANIME_FACE, map_location="cpu",
                                                         weights_only=True)))


def _clip_vision(folder: Path, name: str):
    from engine.control.clip_vision import load_clip_vision

    return load_clip_vision(folder, name)


def _mobile_sam(folder: Path):
    from engine.control.maps.mobile_sam import MobileSamDetector, load_mobile_sam

    return MobileSamDetector(load_mobile_sam(torch.load(folder / MOBILE_SAM, map_location="cpu",
                                                        weights_only=True)))


def _lama(folder: Path):
    """spandrel's LaMa reads the training checkpoint's `generator.*` weights (ControlNetLama.pth)."""
    from spandrel import ModelLoader

    return ModelLoader().load_from_file(folder / "ControlNetLama.pth").model.eval()


ANNOTATORS: dict[str, Annotator] = {
    "hed": Annotator("hed", ("ControlNetHED.pth",), _hed, "Apache-2.0 (lllyasviel's re-implementation)"),
    "pidinet": Annotator("pidinet", ("table5_pidinet.pth",), _pidinet, "MIT (PiDiNet)"),
    "mlsd": Annotator("mlsd", ("mlsd_large_512_fp32.pth",), _mlsd, "Apache-2.0 (M-LSD)"),
    "lineart": Annotator("lineart", ("sk_model.pth", "sk_model2.pth"), _lineart, "MIT (informative-drawings)"),
    "lineart_anime": Annotator("lineart_anime", ("netG.pth",), _lineart_anime, "MIT (lllyasviel)"),
    "openpose": Annotator("openpose", ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"), _openpose,
                          "CMU OpenPose academic licence: non-commercial"),
    "midas": Annotator("midas", ("dpt_hybrid-midas-501f0c75.pt",), _midas, "MIT (MiDaS)"),
    "zoedepth": Annotator("zoedepth", ("ZoeD_M12_N.pt",), _zoe, "MIT (ZoeDepth)"),
    "leres": Annotator("leres", ("res101.pth", "latest_net_G.pth"), _leres,
                       "LeReS / BoostingMonocularDepth: non-commercial research use"),
    "normal_bae": Annotator("normal_bae", ("scannet.pt",), _normal_bae, "MIT (surface_normal_uncertainty)"),
    "lama": Annotator("lama", ("ControlNetLama.pth",), _lama, "Apache-2.0 (LaMa)"),
    "depth_anything": Annotator("depth_anything", (DEPTH_ANYTHING_V1,),
                                lambda folder: _depth_anything(folder, DEPTH_ANYTHING_V1, 1),
                                "Apache-2.0 (Depth Anything V1)"),
    "depth_anything_v2": Annotator("depth_anything_v2", (DEPTH_ANYTHING_V2,),
                                   lambda folder: _depth_anything(folder, DEPTH_ANYTHING_V2, 2),
                                   "CC-BY-NC-4.0 (Depth Anything V2 Large): non-commercial"),
    # sd-webui-controlnet keeps DWPose's ONNX files beside OpenPose's in annotator/downloads/openpose.
    "dwpose": Annotator("openpose", (DWPOSE_DETECTOR, DWPOSE_WHOLEBODY),
                        lambda folder: _pose_estimator(folder, DWPOSE_WHOLEBODY), "Apache-2.0 (DWPose, YOLOX)"),
    "animal_pose": Annotator("openpose", (DWPOSE_DETECTOR, ANIMAL_POSE),
                             lambda folder: _pose_estimator(folder, ANIMAL_POSE, animals=True),
                             "Apache-2.0 (RTMPose AP-10K, YOLOX)"),
    "anime_face_segment": Annotator("anime_face_segment", (ANIME_FACE,), _anime_face,
                                    "MIT (Anime-Face-Segmentation)"),
    "mobile_sam": Annotator("mobile_sam", (MOBILE_SAM,), _mobile_sam, "Apache-2.0 (MobileSAM)"),
    "oneformer_ade20k": Annotator("oneformer/oneformer_ade20k_swin_large", ONEFORMER_FILES,
                                  lambda folder: _oneformer(folder, "ade20k"), "MIT (OneFormer)"),
    "oneformer_coco": Annotator("oneformer/oneformer_coco_swin_large", ONEFORMER_FILES,
                                lambda folder: _oneformer(folder, "coco"), "MIT (OneFormer)"),
    # The IP-Adapter modules' image encoders (`annotator/downloads/clip_vision`).
    "clip_h": Annotator("clip_vision", ("clip_h.pth",), lambda folder: _clip_vision(folder, "clip_h"),
                        "MIT (OpenCLIP ViT-H/14, LAION-2B)"),
    "clip_g": Annotator("clip_vision", ("clip_g.pth",), lambda folder: _clip_vision(folder, "clip_g"),
                        "MIT (OpenCLIP ViT-bigG/14, LAION-2B)"),
}


def annotator_roots(models_root: Path) -> tuple[Path, ...]:
    """Where annotator folders are looked for, in order."""
    return (Path(models_root) / DOWNLOAD_FOLDER, Path(models_root) / EXTENSION_FOLDER)


def find_annotator_folder(name: str, models_root: Path, field: str) -> Path:
    """The folder holding every file of annotator `name`.

    Raises:
        NotFoundError: no root holds them all, naming the files and the download group.
    """
    annotator = ANNOTATORS[name]
    for root in annotator_roots(models_root):
        folder = root / annotator.folder
        if all((folder / file).is_file() for file in annotator.files):
            return folder
    tried = " or ".join(str(root / annotator.folder) for root in annotator_roots(models_root))
    raise NotFoundError(field, f"the {name} annotator needs {', '.join(annotator.files)} in {tried}; "
                               f"run download_models.py --only annotator-{name}")


class AnnotatorStore:
    """Loaded detectors, built on first use from the models folder and kept in a small LRU on the device."""

    def __init__(self, models_root: Path, device: torch.device | str = "cpu", capacity: int = 2):
        self.models_root = Path(models_root)
        self.device = torch.device(device)
        self._loaded = ResidentCache(self._load, capacity)

    def get(self, name: str, field: str = "module"):
        return self._loaded.get((name, find_annotator_folder(name, self.models_root, field)))

    def _load(self, key: tuple[str, Path]):
        name, folder = key
        logger.info("loading the %s annotator from %s", name, folder)
        detector = ANNOTATORS[name].build(folder)
        # Annotators run in fp32 (sd-webui-controlnet does too, except on its low-VRAM path).
        return detector.to(self.device)
