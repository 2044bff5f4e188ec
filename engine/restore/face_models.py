"""The face detector and face parser of A1111's face restorer helper: facexlib's RetinaFace (ResNet-50) and
ParseNet, loaded from the files A1111 keeps in `models/GFPGAN`. facexlib's own loaders download missing files
and build fixed sizes; these read the given files only and take ParseNet's widths from its weights.

facexlib (Apache-2.0 / MIT) is imported lazily, when the models are first loaded.
"""

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch


logger = logging.getLogger(__name__)

# File names facexlib's `init_detection_model("retinaface_resnet50")` and `init_parsing_model("parsenet")` use.
DETECTOR_FILE = "detection_Resnet50_Final.pth"
PARSER_FILE = "parsing_parsenet.pth"
# facexlib `init_parsing_model("parsenet")`: ParseNet(in_size=512, out_size=512, parsing_ch=19).
PARSER_SIZE = 512
_PARSER_BODY = re.compile(r"^body\.(\d+)\.conv1\.conv2d\.weight$")


@dataclass(frozen=True)
class FaceModels:
    """The loaded detector (`facexlib.detection.retinaface.RetinaFace`) and parser (`ParseNet`), both in fp32
    on `device` in eval mode (facexlib runs them with `half=False`)."""

    detector: torch.nn.Module
    parser: torch.nn.Module
    device: torch.device


def load_face_detector(path: Path, device: torch.device) -> torch.nn.Module:
    """RetinaFace with a ResNet-50 body, as `init_detection_model("retinaface_resnet50")` builds it."""
    state_dict = read_weights(path)
    detector = build_retinaface(device)
    detector.load_state_dict(state_dict, strict=True)
    logger.info("loaded face detector %s on %s", path.name, device)
    return detector.to(device).eval()


def build_retinaface(device: torch.device | str) -> torch.nn.Module:
    """facexlib's RetinaFace-ResNet50 network (random weights until a state dict is loaded)."""
    from facexlib.detection.retinaface import RetinaFace

    with warnings.catch_warnings():
        # facexlib asks torchvision for resnet50 with the deprecated `pretrained=False`: nothing is downloaded.
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        return RetinaFace(network_name="resnet50", half=False, device=device)


def load_face_parser(path: Path, device: torch.device) -> torch.nn.Module:
    """ParseNet at facexlib's 512-pixel size, its widths and depth read from the weights."""
    from facexlib.parsing.parsenet import ParseNet

    state_dict = read_weights(path)
    parser = ParseNet(in_size=PARSER_SIZE, out_size=PARSER_SIZE, **parsenet_widths(state_dict))
    parser.load_state_dict(state_dict, strict=True)
    logger.info("loaded face parser %s on %s", path.name, device)
    return parser.to(device).eval()


def parsenet_widths(state_dict: dict[str, torch.Tensor]) -> dict:
    """ParseNet's `base_ch`, `ch_range`, `res_depth` and `parsing_ch` from its weights' shapes.

    The released file gives facexlib's values (64, [32, 256], 10, 19) except that the lower clip reads as 64:
    no width of that network is below 64, so both bounds build the same layers.
    """
    return {
        "base_ch": state_dict["encoder.0.conv2d.weight"].shape[0],
        "ch_range": [
            state_dict["encoder.1.conv1.conv2d.weight"].shape[1],  # the first down block's input: clip(base)
            state_dict["body.0.conv1.conv2d.weight"].shape[0],  # the body runs at the upper clip
        ],
        "res_depth": sum(1 for key in state_dict if _PARSER_BODY.match(key)),
        "parsing_ch": state_dict["out_mask_conv.conv2d.weight"].shape[0],
    }


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A facexlib `.pth` state dict (tensors only: loaded with `weights_only`), "module." prefixes removed as
    facexlib removes them."""
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return {key.removeprefix("module."): value for key, value in state_dict.items()}
