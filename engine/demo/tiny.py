"""Tiny random-weight SD1.5, SDXL and SDXL-refiner models, written as real A1111 single files + config folders.

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
    DiffusionPipeline,
    ModelMixin,
    SchedulerMixin,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTokenizer, PreTrainedModel

from engine.demo.architectures import (
    SCHEDULERS,
    SHARED_WITH,
    TEXT_ENCODERS,
    UNET_CONFIGS,
    VAE_CONFIG,
    VAE_OVERRIDES,
    clip_config,
)
from engine.demo.files import written_atomically
from engine.demo.ldm_format import single_file_state_dict, vae_to_ldm
from engine.demo.tokenizer import write_clip_tokenizer
from engine.errors import choices


logger = logging.getLogger(__name__)

DEMO_METADATA = {"demo": "random weights: produces noise"}
CHECKPOINT_FOLDER = "Stable-diffusion"
CONFIG_FOLDER = "configs"
# Default initialisation leaves every norm at weight 1 / bias 0 (and some layers at zero), so two swapped
# norms would still round-trip "bit-identically". A little noise on every parameter makes each tensor unique.
PARAMETER_JITTER = 0.02

FAMILIES = tuple(UNET_CONFIGS)
LATENT_CHANNELS = 4
# An inpainting UNet's input: the noisy latent, the mask and the masked image's latent (4 + 1 + 4).
INPAINTING_IN_CHANNELS = 9


def tiny_components(family: str, seed: int = 0, in_channels: int = LATENT_CHANNELS) -> dict:
    """Diffusers pipeline components of a tiny random-weight model, fp32, deterministic for a seed.

    Args:
        family: "sd15" (StableDiffusionPipeline), "sdxl" (StableDiffusionXLPipeline) or "sdxl_refiner"
            (StableDiffusionXLImg2ImgPipeline without CLIP-L, as stable-diffusion-xl-refiner-1.0).
        seed: seeds the initialisation; the caller's torch RNG state is left untouched.
        in_channels: the UNet's input channels: 4, or 9 for an inpainting model.

    Returns:
        {"unet", "vae", "text_encoder", "tokenizer", ["text_encoder_2", "tokenizer_2",] "scheduler"}.
    """
    if family not in UNET_CONFIGS:
        raise ValueError(f"unknown model family {family!r}; valid: {choices(FAMILIES)}")
    components: dict = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components["unet"] = UNet2DConditionModel(**UNET_CONFIGS[family], in_channels=in_channels)
        components["vae"] = AutoencoderKL(**VAE_CONFIG, **VAE_OVERRIDES[family])
        for name, tokenizer_name, model_class, width, hidden_act, pad_token in TEXT_ENCODERS[family]:
            tokenizer = _load_tokenizer(pad_token)
            components[tokenizer_name] = tokenizer
            components[name] = model_class(clip_config(width, hidden_act, tokenizer))
        for model in components.values():
            if isinstance(model, torch.nn.Module):
                _jitter_parameters(model)
                model.eval()
    if family in SHARED_WITH:
        source, names = SHARED_WITH[family]
        shared = tiny_components(source, seed)
        components.update({name: shared[name] for name in names})
    scheduler_class, scheduler_kwargs = SCHEDULERS[family]
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
    if family not in VAE_OVERRIDES:
        raise ValueError(f"unknown model family {family!r}; valid: {choices(FAMILIES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**VAE_CONFIG, **VAE_OVERRIDES[family])
        _jitter_parameters(vae)
    vae.eval()
    _save_atomically(vae_to_ldm(vae.state_dict(), vae.config), path)
    return vae


def _save_atomically(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    with written_atomically(path) as partial:
        # safetensors rejects tensors that share storage (views of the models' parameters): save own copies.
        save_file(
            {key: tensor.detach().contiguous().clone() for key, tensor in state_dict.items()},
            partial,
            DEMO_METADATA,
        )


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


def _pipeline_for(components: dict) -> DiffusionPipeline:
    """A pipeline object over the components, only to write its model_index.json."""
    if "text_encoder" not in components:
        # The refiner's model_index.json: no CLIP-L, aesthetic-score conditioning, empty prompts encoded.
        return StableDiffusionXLImg2ImgPipeline(
            **components,
            text_encoder=None,
            tokenizer=None,
            requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False,
            add_watermarker=False,
        )
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
