"""Tiny random-weight control models in the real on-disk formats: InstantID's IP-Adapter and IdentityNet for
the tiny SDXL checkpoint, an SD1.5 canny ControlNet, and (from `tiny_faces`) an antelopev2 pack.

The weights are random: they exist so that tests, CI and a newcomer run the real loading and control code.
"""

import logging
from pathlib import Path

import torch

from engine.control.tiny_faces import write_tiny_antelopev2
from engine.demo.files import torch_save_atomically, written_atomically
from engine.demo.ldm_format import unet_to_ldm
from engine.demo.tiny import PARAMETER_JITTER, tiny_components


logger = logging.getLogger(__name__)

CONTROLNET_FOLDER = "ControlNet"
CONFIG_FOLDER = "configs"
IP_ADAPTER_FILE = "ip-adapter_instant_id_sdxl.bin"
IDENTITYNET_FILE = "control_instant_id_sdxl.safetensors"
CANNY_FILE = "control_v11p_sd15_canny.safetensors"
# Four levels like the real (16, 32, 96, 256): the hint is 8× the latent, and the LDM layout numbers the
# hint block's layers up to 14.
HINT_CHANNELS = (8, 8, 16, 16)
# A1111's ControlNet 1.1 files keep the control model under this prefix (LDM `cldm` layout).
LDM_PREFIX = "control_model."
CONTROLNET_ONLY = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")
# InstantID's Resampler, shrunk: diffusers' converter reads heads = to_q rows // 64 and assumes depth 4.
RESAMPLER = {"dim": 64, "depth": 4, "queries": 16, "embedding": 512, "ff_mult": 4}


def write_tiny_control_models(models_dir: Path, seed: int = 0) -> list[Path]:
    """Write every tiny control model under `models_dir` (A1111 layout) with the configs the loader needs.

    Returns:
        The files written: IP-Adapter, IdentityNet, canny ControlNet, their config folders, the ONNX pair.
    """
    models_dir = Path(models_dir)
    written = write_tiny_instant_id(models_dir, seed)
    written += write_tiny_canny(models_dir, seed)
    written += write_tiny_antelopev2(models_dir, seed)
    logger.info("wrote %d tiny control model files under %s (random weights)", len(written), models_dir)
    return written


def write_tiny_instant_id(models_dir: Path, seed: int = 0) -> list[Path]:
    """InstantID for the tiny SDXL checkpoint: `ip-adapter.bin` in InstantID's key layout and the IdentityNet
    as a diffusers-keyed safetensors file (+ its config folder, as download_models.py fetches the real one)."""
    unet = tiny_components("sdxl", seed)["unet"]
    folder = models_dir / CONTROLNET_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        weights = {"image_proj": _resampler_weights(unet.config.cross_attention_dim),
                   "ip_adapter": _ip_attention_weights(unet)}
        controlnet = _controlnet_from(unet)
    ip_adapter = folder / IP_ADAPTER_FILE
    torch_save_atomically(weights, ip_adapter)
    identitynet = folder / IDENTITYNET_FILE
    _save_safetensors(controlnet.state_dict(), identitynet)
    config = models_dir / CONFIG_FOLDER / "tiny-controlnet-sdxl"
    controlnet.save_config(config)
    return [ip_adapter, identitynet, config]


def write_tiny_canny(models_dir: Path, seed: int = 0) -> list[Path]:
    """An SD1.5 canny ControlNet for the tiny SD1.5 checkpoint, in A1111's LDM layout (`control_model.*`)."""
    unet = tiny_components("sd15", seed)["unet"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        controlnet = _controlnet_from(unet)
    path = models_dir / CONTROLNET_FOLDER / CANNY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_safetensors(controlnet_to_ldm(controlnet.state_dict(), controlnet.config), path)
    config = models_dir / CONFIG_FOLDER / "tiny-controlnet-sd15"
    controlnet.save_config(config)
    return [path, config]


def controlnet_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A diffusers ControlNetModel state dict under the LDM `cldm` names A1111's ControlNet files use."""
    shared = {key: value for key, value in state_dict.items() if not key.startswith(CONTROLNET_ONLY)}
    levels = len(config["down_block_types"])
    ldm = unet_to_ldm(shared, {**config, "up_block_types": ("UpBlock2D",) * levels})
    blocks = 2 * (len(config["conditioning_embedding_out_channels"]) - 1)
    renames = {"controlnet_cond_embedding.conv_in": "input_hint_block.0",
               "controlnet_cond_embedding.conv_out": f"input_hint_block.{2 * (blocks + 1)}",
               "controlnet_mid_block": "middle_block_out.0"}
    renames |= {f"controlnet_cond_embedding.blocks.{i}": f"input_hint_block.{2 * (i + 1)}" for i in range(blocks)}
    zero_convs = {key.split(".")[1] for key in state_dict if key.startswith("controlnet_down_blocks.")}
    renames |= {f"controlnet_down_blocks.{i}": f"zero_convs.{i}.0" for i in zero_convs}
    for key, value in state_dict.items():
        if key.startswith(CONTROLNET_ONLY):
            head, leaf = key.rsplit(".", 1)
            ldm[f"{renames[head]}.{leaf}"] = value
    return {LDM_PREFIX + key: value for key, value in ldm.items()}


def _controlnet_from(unet):
    """A ControlNet mirroring the UNet's encoder, every weight jittered (zero convolutions included, so the
    residuals are not all zero)."""
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)
    with torch.no_grad():
        for parameter in controlnet.parameters():
            parameter.add_(torch.randn_like(parameter) * PARAMETER_JITTER)
    return controlnet.eval()


def _resampler_weights(output_dim: int, embedding: int = RESAMPLER["embedding"], dim: int = RESAMPLER["dim"],
                       inner: int | None = None) -> dict[str, torch.Tensor]:
    """IP-Adapter Plus's `Resampler` state dict (InstantID's too) at a tiny width, random values: `embedding`
    input features, `dim` wide, attention `inner` wide (heads × 64; default `dim`)."""
    inner = inner or dim
    ff = dim * RESAMPLER["ff_mult"]
    shapes = {"latents": (1, RESAMPLER["queries"], dim), "proj_in.weight": (dim, embedding),
              "proj_in.bias": (dim,), "proj_out.weight": (output_dim, dim), "proj_out.bias": (output_dim,),
              "norm_out.weight": (output_dim,), "norm_out.bias": (output_dim,)}
    for layer in range(RESAMPLER["depth"]):
        attention, feed_forward = f"layers.{layer}.0", f"layers.{layer}.1"
        shapes |= {f"{attention}.{norm}.{part}": (dim,) for norm in ("norm1", "norm2") for part in ("weight", "bias")}
        shapes |= {f"{attention}.to_q.weight": (inner, dim), f"{attention}.to_kv.weight": (2 * inner, dim),
                   f"{attention}.to_out.weight": (dim, inner), f"{feed_forward}.0.weight": (dim,),
                   f"{feed_forward}.0.bias": (dim,), f"{feed_forward}.1.weight": (ff, dim),
                   f"{feed_forward}.3.weight": (dim, ff)}
    # LayerNorm gains (the 1-d weights) near 1, everything else near 0.
    return {key: torch.randn(shape) * 0.1 + (1.0 if key.endswith("weight") and len(shape) == 1 else 0.0)
            for key, shape in shapes.items()}


def _ip_attention_weights(unet) -> dict[str, torch.Tensor]:
    """`{n}.to_k_ip.weight` / `{n}.to_v_ip.weight` for each cross-attention, n its position among all the
    UNet's attention processors (InstantID loads them into `ModuleList(unet.attn_processors.values())`)."""
    weights = {}
    for position, name in enumerate(unet.attn_processors):
        if not name.endswith("attn2.processor"):
            continue
        attention = unet.get_submodule(name.removesuffix(".processor"))
        shape = (attention.to_out[0].out_features, unet.config.cross_attention_dim)
        weights |= {f"{position}.to_{kind}_ip.weight": torch.randn(shape) * 0.1 for kind in ("k", "v")}
    return weights


def _save_safetensors(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    with written_atomically(path) as partial:  # world-readable, and never listed half-written
        save_file({key: value.detach().contiguous().clone() for key, value in state_dict.items()}, str(partial))
