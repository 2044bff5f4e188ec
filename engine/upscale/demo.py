"""Tiny random-weight ESRGAN (RRDBNet) upscalers, saved in the real release formats so A1111's names resolve.

`RealESRGAN/RealESRGAN_x4plus.pth` is laid out like the Real-ESRGAN release (basicsr key names under
"params_ema"), `ESRGAN/ESRGAN_4x.pth` like the original ESRGAN release (`model.N...` key names). Both are
4x RRDBNets, 8 features wide with one RRDB block: they produce noise, fast.
"""

import logging
import re
from pathlib import Path

import torch
from spandrel.architectures.ESRGAN import ESRGAN as RRDBNet

from engine.demo.files import torch_save_atomically


logger = logging.getLogger(__name__)

TINY_FEATURES = 8
TINY_BLOCKS = 1
TINY_SCALE = 4
REALESRGAN_FILE = Path("RealESRGAN") / "RealESRGAN_x4plus.pth"
ESRGAN_FILE = Path("ESRGAN") / "ESRGAN_4x.pth"

# Old ESRGAN key (as spandrel's RRDBNet names it) → Real-ESRGAN/basicsr key, for a 4x model with one block.
# The trunk's final conv is `model.1.sub.<blocks>`; the two upsampling convs sit at model.3 and model.6.
_BASICSR_RENAMES = (
    (r"^model\.0\.", "conv_first."),
    (r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.", r"body.\1.rdb\2.conv\3."),
    (rf"^model\.1\.sub\.{TINY_BLOCKS}\.", "conv_body."),
    (r"^model\.3\.", "conv_up1."),
    (r"^model\.6\.", "conv_up2."),
    (r"^model\.8\.", "conv_hr."),
    (r"^model\.10\.", "conv_last."),
)


def tiny_rrdbnet(seed: int = 0) -> RRDBNet:
    """A 4x RRDBNet with random weights, deterministic for `seed`; the caller's RNG state is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RRDBNet(num_filters=TINY_FEATURES, num_blocks=TINY_BLOCKS, scale=TINY_SCALE).eval()


def basicsr_state_dict(model: RRDBNet) -> dict[str, torch.Tensor]:
    """The model's weights under Real-ESRGAN's (basicsr `RRDBNet`) key names."""
    renamed = {}
    for key, tensor in model.state_dict().items():
        new_key = key
        for pattern, replacement in _BASICSR_RENAMES:
            new_key = re.sub(pattern, replacement, new_key)
        if new_key == key:
            raise ValueError(f"no Real-ESRGAN name for {key}")
        renamed[new_key] = tensor.detach().clone()
    return renamed


def write_tiny_esrgan(models_dir: Path) -> list[Path]:
    """Write `RealESRGAN/RealESRGAN_x4plus.pth` ("R-ESRGAN 4x+") and `ESRGAN/ESRGAN_4x.pth` ("ESRGAN_4x").

    Returns:
        The two files written.
    """
    realesrgan = tiny_rrdbnet(seed=0)
    esrgan = tiny_rrdbnet(seed=1)
    written = [
        torch_save_atomically({"params_ema": basicsr_state_dict(realesrgan)}, models_dir / REALESRGAN_FILE),
        torch_save_atomically({key: tensor.detach().clone() for key, tensor in esrgan.state_dict().items()}, models_dir / ESRGAN_FILE),
    ]
    logger.info("wrote demo upscalers %s (random weights: produce noise)", ", ".join(map(str, written)))
    return written
