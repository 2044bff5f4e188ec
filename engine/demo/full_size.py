"""Full-size SD1.5 and SDXL single-file checkpoints with random fp16 weights, for load-time measurements.

The models are built on the meta device (shapes only, no memory), renamed to the LDM/SGM layout of A1111
files, and each tensor is drawn and written on its own into a safetensors file, so writing a 6.9 GB SDXL
file needs a few hundred MB of memory. The config folder is written beside it under `configs/`, as for the
tiny demo models, with the demo tokenizer (the vocabulary is the real size; tokens the demo tokenizer never
produces are simply unused).
"""

import json
import struct
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from engine.demo.architectures import VAE_OVERRIDES
from engine.demo.files import written_atomically
from engine.demo.ldm_format import single_file_state_dict
from engine.demo.tiny import (
    CHECKPOINT_FOLDER,
    CONFIG_FOLDER,
    tiny_components,
    write_config_folder,
)
from engine.errors import choices


# The released models' architectures (runwayml/stable-diffusion-v1-5, stable-diffusion-xl-base-1.0 configs).
UNET_CONFIGS = {
    "sd15": {
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "layers_per_block": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 768,
        "sample_size": 64,
    },
    "sdxl": {
        "block_out_channels": (320, 640, 1280),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 2,
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "use_linear_projection": True,
        "cross_attention_dim": 2048,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
        "sample_size": 128,
    },
}
VAE_CONFIG = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
}
VAE_SAMPLE_SIZE = {"sd15": 512, "sdxl": 1024}
# CLIP ViT-L/14 (SD1.5, and SDXL's first encoder) and OpenCLIP ViT-bigG/14 (SDXL's second).
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "projection_dim": 768, "hidden_act": "quick_gelu"}
OPEN_CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
               "projection_dim": 1280, "hidden_act": "gelu"}
TEXT_ENCODERS = {
    "sd15": {"text_encoder": (CLIPTextModel, CLIP_L)},
    "sdxl": {"text_encoder": (CLIPTextModel, CLIP_L), "text_encoder_2": (CLIPTextModelWithProjection, OPEN_CLIP_G)},
}
VOCAB_SIZE = 49408
FAMILIES = tuple(UNET_CONFIGS)
WEIGHT_SCALE = 0.02  # small random weights: activations stay finite through 32 layers in fp16


def full_size_components(family: str) -> dict:
    """The pipeline components at the released sizes on the meta device (no memory), tokenizers and scheduler
    from the demo models."""
    if family not in UNET_CONFIGS:
        raise ValueError(f"unknown model family {family!r}; valid: {choices(FAMILIES)}")
    demo = tiny_components(family)
    components = {name: value for name, value in demo.items() if not isinstance(value, torch.nn.Module)}
    with torch.device("meta"):
        components["unet"] = UNet2DConditionModel(**UNET_CONFIGS[family])
        components["vae"] = AutoencoderKL(
            **VAE_CONFIG, **VAE_OVERRIDES[family], sample_size=VAE_SAMPLE_SIZE[family]
        )
        for name, (model_class, sizes) in TEXT_ENCODERS[family].items():
            tokenizer = demo[name.replace("text_encoder", "tokenizer")]
            config = CLIPTextConfig(
                vocab_size=VOCAB_SIZE,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **sizes,
            )
            components[name] = model_class(config)
    return components


def write_full_size_checkpoint(family: str, name: str, models_dir: Path, seed: int = 0) -> Path:
    """Write `Stable-diffusion/<name>.safetensors` (fp16, random) and `configs/<name>/` under models_dir.

    Returns:
        The checkpoint's path.
    """
    components = full_size_components(family)
    layout = single_file_state_dict(family, components)  # meta tensors under A1111's key names
    checkpoint = models_dir / CHECKPOINT_FOLDER / f"{name}.safetensors"
    generator = torch.Generator().manual_seed(seed)
    with written_atomically(checkpoint) as partial, partial.open("wb") as file:
        file.write(_safetensors_header({key: tuple(tensor.shape) for key, tensor in layout.items()}))
        for shape in (tuple(tensor.shape) for tensor in layout.values()):
            weights = torch.randn(shape, generator=generator).mul_(WEIGHT_SCALE).to(torch.float16)
            file.write(weights.numpy().tobytes())
    config_folder = write_config_folder(components, models_dir / CONFIG_FOLDER / name)
    (config_folder / "full_size.json").write_text(json.dumps({"family": family, "random_weights": True}))
    return checkpoint


def _safetensors_header(shapes: dict[str, tuple[int, ...]]) -> bytes:
    """The safetensors preamble for fp16 tensors stored in `shapes`' order: the header's length (u64 little
    endian), then its JSON padded with spaces to 8-byte alignment."""
    header, offset = {"__metadata__": {"demo": "random weights: produces noise"}}, 0
    for key, shape in shapes.items():
        size = 2 * int(torch.Size(shape).numel())
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text
