"""Tiny demo face restorers and face models, saved as the files A1111 keeps (`models/Codeformer`,
`models/GFPGAN`) in their release formats (`{"params_ema": state_dict}` for the restorers, bare state dicts for
facexlib's), so the whole face restoration path runs on them.

- `GFPGAN/GFPGANv1.4.pth`: spandrel's `GFPGANv1Clean` at 1/16 of the released width (channel multiplier 1, 32
  style features, one style MLP layer), random weights.
- `Codeformer/codeformer-v0.1.0.pth`: spandrel_extra_arches' `CodeFormer` with a one-layer, 16-wide transformer
  and a 16-entry codebook, random weights. Its VQGAN encoder and generator cannot be made smaller (the class
  fixes their widths), so this file holds 74 M parameters (stored in fp16, 148 MB) and restores a face in
  about 10 s on a CPU.
- `GFPGAN/detection_Resnet50_Final.pth` and `GFPGAN/parsing_parsenet.pth`: see `engine.restore.tiny_faces` for
  what the detector takes for a face.
"""

import logging
from pathlib import Path

import torch

from engine.demo.files import torch_save_atomically


logger = logging.getLogger(__name__)

GFPGAN_FILE = Path("GFPGAN") / "GFPGANv1.4.pth"
CODEFORMER_FILE = Path("Codeformer") / "codeformer-v0.1.0.pth"
DETECTOR_FILE = Path("GFPGAN") / "detection_Resnet50_Final.pth"
PARSER_FILE = Path("GFPGAN") / "parsing_parsenet.pth"
# GFPGANv1Clean's size hyperparameters for the demo (the released model: 512, 2, 8, 1).
TINY_GFPGAN = {"out_size": 512, "num_style_feat": 32, "channel_multiplier": 1, "num_mlp": 1, "narrow": 1 / 16}
# CodeFormer's transformer and codebook, the parts spandrel reads from the weights (n_head is fixed at 8).
TINY_CODEFORMER = {"dim_embd": 16, "n_head": 8, "n_layers": 1, "codebook_size": 16}


def tiny_gfpgan(seed: int = 0) -> torch.nn.Module:
    from spandrel.architectures.GFPGAN import GFPGAN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GFPGAN(**TINY_GFPGAN, decoder_load_path=None, fix_decoder=False, input_is_latent=True,
                      different_w=True, sft_half=True).eval()


def tiny_codeformer(seed: int = 0) -> torch.nn.Module:
    """CodeFormer in fp16 with random weights: uniform within ±1/√fan-in like PyTorch's default layers, norm
    scales 1 and biases 0. Built on the meta device and given fp16 storage directly: initialising 74 M
    parameters in fp32 and converting them would take most of the demo writer's time."""
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    with torch.device("meta"):
        model = CodeFormer(**TINY_CODEFORMER)
    model = model.to(dtype=torch.float16).to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim > 1:
                bound = (parameter.numel() / parameter.shape[0]) ** -0.5
                parameter.uniform_(-bound, bound, generator=generator)
            else:
                parameter.fill_(1.0 if name.endswith("weight") else 0.0)
    return model


def write_tiny_face_restorers(models_dir: Path) -> list[Path]:
    """Write the two restorers and the face detector and parser; returns the files written."""
    from engine.restore.tiny_faces import tiny_detector_state_dict, tiny_parser_state_dict

    models_dir = Path(models_dir)
    written = [
        torch_save_atomically({"params_ema": tiny_gfpgan().state_dict()}, models_dir / GFPGAN_FILE),
        # These two large files are fp16 (half the size); the loaders copy the values into fp32 networks.
        torch_save_atomically({"params_ema": tiny_codeformer().state_dict()}, models_dir / CODEFORMER_FILE),
        torch_save_atomically(tiny_detector_state_dict(), models_dir / DETECTOR_FILE),
        torch_save_atomically(tiny_parser_state_dict(), models_dir / PARSER_FILE),
    ]
    logger.info("wrote demo face restorers %s (random weights)", ", ".join(map(str, written)))
    return written
