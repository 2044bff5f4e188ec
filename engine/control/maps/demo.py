"""Random-weight annotator files in their real formats and sd-webui-controlnet's folder layout.

Annotators are fixed architectures (their loaders build the network with hard-coded widths), so "tiny" is not
possible: these are the real networks with random weights. The small ones (HED, PiDiNet, M-LSD, lineart) are
part of the demo models; the large ones (OpenPose, MiDaS, NormalBAE, anime lineart, LaMa: 200–500 MB each) are
written only on request (`python -m engine demo-models --annotators all`, and the slow tests).
"""

import functools
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from engine.control.maps.annotators import ANNOTATORS, DOWNLOAD_FOLDER, quiet_import


logger = logging.getLogger(__name__)


def _hed() -> dict:
    # The published ControlNetHED.pth is fp16; controlnet_aux loads it into its fp32 network.
    network = quiet_import("controlnet_aux.hed").ControlNetHED_Apache2()
    return {"ControlNetHED.pth": {key: value.half() for key, value in network.state_dict().items()}}


def _pidinet() -> dict:
    network = quiet_import("controlnet_aux.pidi.model").pidinet()
    # table5_pidinet.pth is a training checkpoint of a DataParallel model.
    return {"table5_pidinet.pth": {"state_dict": {f"module.{k}": v for k, v in network.state_dict().items()}}}


def _mlsd() -> dict:
    network = quiet_import("controlnet_aux.mlsd.models.mbv2_mlsd_large").MobileV2_MLSD_Large()
    return {"mlsd_large_512_fp32.pth": network.state_dict()}


def _lineart() -> dict:
    generator = quiet_import("controlnet_aux.lineart").Generator
    return {"sk_model.pth": generator(3, 1, 3).state_dict(), "sk_model2.pth": generator(3, 1, 3).state_dict()}


def _lineart_anime() -> dict:
    module = quiet_import("controlnet_aux.lineart_anime")
    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return {"netG.pth": module.UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False).state_dict()}


def _openpose() -> dict:
    body = quiet_import("controlnet_aux.open_pose.model")
    face = quiet_import("controlnet_aux.open_pose.face")
    # controlnet_aux's Body/Hand loaders rename the keys of the original Caffe-converted checkpoints back.
    return {"body_pose_model.pth": _openpose_keys(body.bodypose_model()),
            "hand_pose_model.pth": _openpose_keys(body.handpose_model()),
            "facenet.pth": face.FaceNet().state_dict()}


def _openpose_keys(network) -> dict:
    """The original pytorch-openpose checkpoints name layers without their block prefix (`conv1_1.weight`)."""
    return {".".join(key.split(".")[1:]): value for key, value in network.state_dict().items()}


def _midas() -> dict:
    module = quiet_import("controlnet_aux.midas.midas.dpt_depth")
    network = module.DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)
    return {"dpt_hybrid-midas-501f0c75.pt": network.state_dict()}


def _normal_bae() -> dict:
    import types

    # The arguments controlnet_aux's `NormalBaeDetector.from_pretrained` builds the network with.
    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                 importance_ratio=0.7)
    network = quiet_import("controlnet_aux.normalbae.nets.NNET").NNET(args)
    return {"scannet.pt": {"model": network.state_dict()}}


def _lama() -> dict:
    from spandrel.architectures.LaMa import LaMa

    network = LaMa(in_nc=4, out_nc=3)
    # ControlNetLama.pth is a Lightning checkpoint whose generator weights sit under `generator.model`.
    return {"ControlNetLama.pth": {"state_dict": {f"generator.{k.removeprefix('model.')}": v
                                                  for k, v in network.state_dict().items()}}}


SMALL: dict[str, Callable[[], dict]] = {"hed": _hed, "pidinet": _pidinet, "mlsd": _mlsd, "lineart": _lineart}
LARGE: dict[str, Callable[[], dict]] = {"lineart_anime": _lineart_anime, "openpose": _openpose, "midas": _midas,
                                        "normal_bae": _normal_bae, "lama": _lama}


def write_random_annotators(models_dir: Path, names=tuple(SMALL), seed: int = 0) -> list[Path]:
    """Write the named annotators' files under `<models>/ControlNetAnnotators/<folder>/`."""
    writers = {**SMALL, **LARGE}
    written = []
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        for name in names:
            folder = Path(models_dir) / DOWNLOAD_FOLDER / ANNOTATORS[name].folder
            folder.mkdir(parents=True, exist_ok=True)
            for file, contents in writers[name]().items():
                torch.save(contents, folder / file)
                written.append(folder / file)
    logger.info("wrote %d random-weight annotator files under %s", len(written), models_dir)
    return written
