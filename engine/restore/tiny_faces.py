"""The demo's face detector and face parser: facexlib's RetinaFace-ResNet50 and ParseNet classes with weights
set by hand, so tests and newcomers know what is a face.

What the demo detector takes for a face: the helper resizes the image to 640 pixels on its shorter side; there
the detector samples brightness (the mean of R, G and B over 7 × 7 pixels, the brightest such window within
2 pixels) at the points of a 32-pixel grid, and a grid cell whose four corner samples average above
`FACE_BRIGHTNESS` (200 of 255) is a face. So a white square whose side is about 1/8 of the image's shorter
side (1/9 to 1/7) is exactly one face, wherever it is; a smaller one may be missed, and a larger white area
gives several overlapping faces (RetinaFace's NMS merges only the closest). A face's box is a square of 40 % of
the shorter side centred on its cell (within 1/24 of the shorter side of the white square's centre), with
eyes, nose and mouth at the FFHQ template's places: each face's 512-pixel crop is exactly its box. Faces whose
eyes end up less than 5 pixels apart in the original image are dropped (A1111's `eye_dist_threshold`): images
under 52 pixels on their shorter side have none.

The parser labels every pixel of a crop as skin, so each face is pasted back through facexlib's blurred square
mask. The ParseNet is narrow (random weights besides its output layer), so it runs fast.
"""

import numpy as np
import torch
from torch import nn


# A cell is a face when its corners' mean brightness (0–255) is above this.
FACE_BRIGHTNESS = 200.0
# facexlib subtracts these BGR means before the network; mean brightness b then reads (b − 114.67) / 255 + 0.5.
_BGR_MEANS = (104.0, 117.0, 123.0)
_OFFSET = 0.5  # keeps the brightness channel positive through the ReLUs
_GAIN = 40.0  # logit slope per unit of that channel
_CONFIDENCE_LOGIT = 3.4761  # log(0.97 / 0.03): A1111's helper keeps faces scored above 0.97
_NEVER = 20.0  # a background logit no face logit beats
FACE_LEVEL = 2  # RetinaFace's stride-32 level, whose first anchor is 256 pixels
LANDMARK_VARIANCE = 0.1  # RetinaFace's cfg['variance'][0]: landmark offsets are in units of 0.1 anchor
PARSER_SKIN_CLASS = 1  # facexlib's MASK_COLORMAP pastes classes 1–13 and 15


def tiny_detector_state_dict() -> dict[str, torch.Tensor]:
    """RetinaFace-ResNet50 weights (fp16) that score bright cells as faces (see the module docstring)."""
    from engine.restore.face_models import build_retinaface

    # Every value is set below: build on the meta device and give it fp16 storage, nothing to initialise.
    with torch.device("meta"):
        detector = build_retinaface("meta")
    detector = detector.to(dtype=torch.float16).to_empty(device="cpu")
    with torch.no_grad():
        _clear(detector)
        _carry_brightness(detector)
        _score_bright_cells(detector)
        _place_landmarks(detector)
    return detector.state_dict()


def _clear(detector: nn.Module) -> None:
    """Every convolution outputs zero and every BatchNorm passes its input through."""
    for module in detector.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.zero_()
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.BatchNorm2d):
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
            module.weight.fill_(1.0)
            module.bias.zero_()
            module.num_batches_tracked.zero_()


def _carry_brightness(detector: nn.Module) -> None:
    """Channel 0 carries the mean brightness: the stem averages a 7 × 7 window (offset to stay positive), each
    stage's projection shortcut passes it on (residual branches are zero), the stride-32 FPN and SSH convs keep
    it, the SSH one averaging the four grid points around each cell."""
    body = detector.body
    body.conv1.weight[0] = 1.0 / (3 * 7 * 7)
    body.bn1.weight[0] = 1.0 / 255.0
    body.bn1.bias[0] = _OFFSET
    for stage in (body.layer1, body.layer2, body.layer3, body.layer4):
        stage[0].downsample[0].weight[0, 0] = 1.0
    detector.fpn.output3[0].weight[0, 0] = 1.0
    detector.ssh3.conv3X3[0].weight[0, 0, 1:, 1:] = 0.25


def _score_bright_cells(detector: nn.Module) -> None:
    """The first anchor of the stride-32 level scores brightness; every other anchor is background."""
    threshold = (FACE_BRIGHTNESS - sum(_BGR_MEANS) / 3) / 255.0 + _OFFSET
    for level, head in enumerate(detector.ClassHead):
        head.conv1x1.bias.copy_(torch.tensor([_NEVER, -_NEVER] * 2))
        if level == FACE_LEVEL:
            head.conv1x1.weight[1, 0] = _GAIN
            head.conv1x1.bias[:2] = torch.tensor([0.0, _CONFIDENCE_LOGIT - _GAIN * threshold])


def _place_landmarks(detector: nn.Module) -> None:
    """Landmarks at the FFHQ template's fractions of the anchor, so each face's crop is its box."""
    from engine.restore.helper import FACE_SIZE, FFHQ_TEMPLATE_512

    offsets = (FFHQ_TEMPLATE_512 / FACE_SIZE - 0.5) / LANDMARK_VARIANCE
    detector.LandmarkHead[FACE_LEVEL].conv1x1.bias[:10] = torch.from_numpy(offsets.reshape(-1).astype(np.float32))


def tiny_parser_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A narrow ParseNet (random weights) whose output layer labels every pixel as skin."""
    from facexlib.parsing.parsenet import ParseNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parser = ParseNet(in_size=512, out_size=512, base_ch=4, ch_range=[4, 16], res_depth=1, parsing_ch=19)
    with torch.no_grad():
        layer = parser.out_mask_conv.conv2d
        layer.weight.zero_()
        layer.bias.zero_()
        layer.bias[PARSER_SKIN_CLASS] = 1.0
    return parser.state_dict()
