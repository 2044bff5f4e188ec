"""Tiny random-weight SD1.5- and SDXL-shaped models, written as real A1111 single files plus config folders.

The weights are random: the models produce noise. They exist so that tests, CI and a newcomer without
weights can run the whole product on the same code path and file formats as real checkpoints.
"""

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    ModelMixin,
    PNDMScheduler,
    SchedulerMixin,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedModel,
)

from engine.demo.ldm_format import single_file_state_dict, vae_to_ldm
from engine.demo.tokenizer import (
    END_OF_TEXT,
    MODEL_MAX_LENGTH,
    OPEN_CLIP_PAD,
    write_clip_tokenizer,
)
from engine.errors import choices


logger = logging.getLogger(__name__)

DEMO_METADATA = {"demo": "random weights: produces noise"}
CHECKPOINT_FOLDER = "Stable-diffusion"
CONFIG_FOLDER = "configs"
CHECKPOINT_MODE = 0o644
# Default initialisation leaves every norm at weight 1 / bias 0 (and some layers at zero), so two swapped
# norms would still round-trip "bit-identically". A little noise on every parameter makes each tensor unique.
PARAMETER_JITTER = 0.02

# Real block structure (levels, resnets per level, where cross-attention sits), widths shrunk.
_UNET_CONFIGS = {
    "sd15": {
        "block_out_channels": (32, 32, 64, 64),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "layers_per_block": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 32,
        "norm_num_groups": 8,
        "sample_size": 8,
    },
    "sdxl": {
        "block_out_channels": (32, 64, 64),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 2,
        "transformer_layers_per_block": (1, 2, 2),
        "attention_head_dim": (2, 4, 4),
        "use_linear_projection": True,
        # The UNet attends to both encoders' hidden states side by side: 32 + 48.
        "cross_attention_dim": 80,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        # 6 size/crop numbers x addition_time_embed_dim, plus text_encoder_2's pooled projection (48).
        "projection_class_embeddings_input_dim": 6 * 8 + 48,
        "norm_num_groups": 8,
        "sample_size": 8,
    },
}
_VAE_CONFIG = {
    "block_out_channels": (8, 16, 32, 32),  # 4 levels: the latent is 1/8 of the image, as A1111 assumes
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
}
_VAE_OVERRIDES = {
    "sd15": {"scaling_factor": 0.18215},
    "sdxl": {"scaling_factor": 0.13025, "force_upcast": True},
}


def _clip_config(width: int, hidden_act: str, tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """A CLIP text config at a tiny width whose vocabulary and special ids are the tokenizer's."""
    # 12 layers: A1111's "CLIP skip" reaches back up to 12 layers of CLIP-L, and diffusers recognises an
    # SDXL file by a key of OpenCLIP's 10th layer (`resblocks.9`).
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=4 * width,
        projection_dim=width,
        num_hidden_layers=12,
        num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# (component, tokenizer component, model class, width, activation, pad token). SDXL's encoders must differ
# in width: diffusers' single-file loader tells them apart by the width of their position embeddings.
_TEXT_ENCODERS = {
    "sd15": (("text_encoder", "tokenizer", CLIPTextModel, 32, "quick_gelu", END_OF_TEXT),),
    "sdxl": (
        ("text_encoder", "tokenizer", CLIPTextModel, 32, "quick_gelu", END_OF_TEXT),
        ("text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection, 48, "gelu", OPEN_CLIP_PAD),
    ),
}
# As the hub's scheduler configs of runwayml/stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0.
_SCALED_LINEAR = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}
_SCHEDULERS = {
    "sd15": (
        PNDMScheduler,
        {**_SCALED_LINEAR, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1},
    ),
    "sdxl": (
        EulerDiscreteScheduler,
        {
            **_SCALED_LINEAR,
            "prediction_type": "epsilon",
            "interpolation_type": "linear",
            "timestep_spacing": "leading",
            "steps_offset": 1,
            "use_karras_sigmas": False,
        },
    ),
}
FAMILIES = tuple(_UNET_CONFIGS)
LATENT_CHANNELS = 4
# An inpainting UNet's input: the noisy latent, the mask and the masked image's latent (4 + 1 + 4).
INPAINTING_IN_CHANNELS = 9


def tiny_components(family: str, seed: int = 0, in_channels: int = LATENT_CHANNELS) -> dict:
    """Diffusers pipeline components of a tiny random-weight model, fp32, deterministic for a seed.

    Args:
        family: "sd15" (StableDiffusionPipeline) or "sdxl" (StableDiffusionXLPipeline).
        seed: seeds the initialisation; the caller's torch RNG state is left untouched.
        in_channels: the UNet's input channels: 4, or 9 for an inpainting model.

    Returns:
        {"unet", "vae", "text_encoder", "tokenizer", ["text_encoder_2", "tokenizer_2",] "scheduler"}.
    """
    if family not in _UNET_CONFIGS:
        raise ValueError(f"unknown model family {family!r}; valid: {choices(FAMILIES)}")
    components: dict = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components["unet"] = UNet2DConditionModel(**_UNET_CONFIGS[family], in_channels=in_channels)
        components["vae"] = AutoencoderKL(**_VAE_CONFIG, **_VAE_OVERRIDES[family])
        for name, tokenizer_name, model_class, width, hidden_act, pad_token in _TEXT_ENCODERS[family]:
            tokenizer = _load_tokenizer(pad_token)
            components[tokenizer_name] = tokenizer
            components[name] = model_class(_clip_config(width, hidden_act, tokenizer))
        for model in components.values():
            if isinstance(model, torch.nn.Module):
                _jitter_parameters(model)
                model.eval()
    scheduler_class, scheduler_kwargs = _SCHEDULERS[family]
    components["scheduler"] = scheduler_class(**scheduler_kwargs)
    return components


def write_config_folder(components: dict, dest: Path) -> Path:
    """Write a diffusers pipeline folder without weights: the `config=` of `from_single_file`.

    Writes model_index.json, <model>/config.json, scheduler/scheduler_config.json and the tokenizer files.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name, component in components.items():
        writer = next((write for base, write in _CONFIG_WRITERS if isinstance(component, base)), None)
        if writer is None:
            raise TypeError(f"{name}: no config writer for {type(component).__name__}")
        writer(component, dest / name)
    _pipeline_for(components).save_config(dest)
    return dest


def write_tiny_checkpoint(
    family: str, name: str, models_dir: Path, seed: int = 0, in_channels: int = LATENT_CHANNELS
) -> list[Path]:
    """Write `Stable-diffusion/<name>.safetensors` (LDM layout, fp32) and `configs/<name>/` under models_dir.

    With `in_channels=9` the checkpoint is an inpainting model. Its config folder still describes the base
    architecture (a 4-channel UNet), as the real SD1.5 config folder does for sd-v1-5-inpainting: the loader
    must take the input width from the weights.
    """
    components = tiny_components(family, seed, in_channels)
    state_dict = single_file_state_dict(family, components)
    checkpoint = models_dir / CHECKPOINT_FOLDER / f"{name}.safetensors"
    _save_atomically(state_dict, checkpoint)
    config_folder = write_config_folder(components, models_dir / CONFIG_FOLDER / name)
    if in_channels != LATENT_CHANNELS:
        unet_config = config_folder / "unet" / "config.json"
        base_architecture = {**json.loads(unet_config.read_text()), "in_channels": LATENT_CHANNELS}
        unet_config.write_text(json.dumps(base_architecture, indent=2))
    logger.info(
        "wrote demo model %s (%d tensors, random weights: produces noise)", checkpoint, len(state_dict)
    )
    return [checkpoint, config_folder]


def write_tiny_vae(family: str, path: Path, seed: int = 1) -> AutoencoderKL:
    """Write a tiny VAE of `family`'s architecture as an A1111 VAE file (`VAE/*.safetensors`).

    Real VAE files (vae-ft-mse-840000-ema-pruned, sdxl_vae) hold the LDM autoencoder's keys without the
    checkpoint's `first_stage_model.` prefix. Returns the VAE written (random weights, differing from the
    demo checkpoints' own VAE for any seed but 0).
    """
    if family not in _VAE_OVERRIDES:
        raise ValueError(f"unknown model family {family!r}; valid: {choices(FAMILIES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**_VAE_CONFIG, **_VAE_OVERRIDES[family])
        _jitter_parameters(vae)
    vae.eval()
    _save_atomically(vae_to_ldm(vae.state_dict(), vae.config), path)
    return vae


def _save_atomically(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    # safetensors rejects tensors that share storage (views of the models' parameters): save own copies.
    save_file(
        {key: tensor.detach().contiguous().clone() for key, tensor in state_dict.items()},
        partial,
        DEMO_METADATA,
    )
    # safetensors creates its files owner-only; a models folder is usually read by another user (a container).
    partial.chmod(CHECKPOINT_MODE)
    partial.replace(path)  # the catalog never sees a half-written file


def _load_tokenizer(pad_token: str) -> CLIPTokenizer:
    """The tokenizer exactly as a config folder written by write_clip_tokenizer loads."""
    with tempfile.TemporaryDirectory() as folder:
        return CLIPTokenizer.from_pretrained(
            write_clip_tokenizer(Path(folder), pad_token), local_files_only=True
        )


@torch.no_grad()
def _jitter_parameters(model: torch.nn.Module) -> None:
    for parameter in model.parameters():
        parameter.add_(torch.randn_like(parameter) * PARAMETER_JITTER)


def _pipeline_for(components: dict) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A pipeline object over the components, only to write its model_index.json."""
    if "text_encoder_2" in components:
        return StableDiffusionXLPipeline(
            **components,
            image_encoder=None,
            feature_extractor=None,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    return StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def _write_tokenizer(tokenizer: CLIPTokenizer, dest: Path) -> None:
    write_clip_tokenizer(dest, tokenizer.pad_token)


_CONFIG_WRITERS: tuple[tuple[type, Callable], ...] = (
    (ModelMixin, lambda model, dest: model.save_config(dest)),
    (SchedulerMixin, lambda scheduler, dest: scheduler.save_config(dest)),
    (PreTrainedModel, lambda model, dest: model.config.save_pretrained(dest)),
    (CLIPTokenizer, _write_tokenizer),
)
