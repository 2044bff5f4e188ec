"""A tiny LoRA for tiny-sd15 in kohya's format (the files A1111 users download), for the demo and its examples.

Random weights, like the demo checkpoints: it changes the noise they make, which is all a demo needs to show
that a `<lora:…>` tag reached a pass.
"""

import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.demo.files import written_atomically


logger = logging.getLogger(__name__)

LORA_FILE = Path("Lora") / "tiny-sd15-style.safetensors"
RANK = 4
ALPHA = 2.0
_ATTENTION = ("to_q", "to_k", "to_v", "to_out_0")
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
# kohya module names (diffusers-style, as kohya's SD1.5 trainer writes them) with their (out, in) widths in
# tiny-sd15: the first self-attention of the UNet, a cross-attention key, and the text encoder's first layer.
TARGETS: tuple[tuple[str, int, int], ...] = (
    *((f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_{name}", 32, 32) for name in _ATTENTION),
    ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k", 32, 32),
    *((f"lora_te_text_model_encoder_layers_0_self_attn_{name}", 32, 32) for name in _PROJECTIONS),
)


def write_tiny_lora(models_dir: Path, seed: int = 0) -> list[Path]:
    """Write `Lora/tiny-sd15-style.safetensors` (lora_down / lora_up / alpha per module) under `models_dir`."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, out_features, in_features in TARGETS:
        tensors[f"{module}.lora_down.weight"] = torch.randn(RANK, in_features, generator=generator) * 0.1
        tensors[f"{module}.lora_up.weight"] = torch.randn(out_features, RANK, generator=generator) * 0.1
        tensors[f"{module}.alpha"] = torch.tensor(ALPHA)
    path = models_dir / LORA_FILE
    with written_atomically(path) as partial:
        save_file(tensors, partial, {"ss_output_name": path.stem, "demo": "random weights"})
    logger.info("wrote demo LoRA %s", path)
    return [path]
