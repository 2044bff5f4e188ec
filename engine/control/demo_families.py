"""Tiny random-weight control models beyond canny and InstantID, in the formats sd-webui-controlnet users have:
SD1.5 ControlNet 1.1 single files (LDM `control_model.*` keys) for inpaint, depth and shuffle, an SDXL
ControlNet single file in diffusers keys, an SDXL union ControlNet (xinsir ProMax layout: diffusers keys plus its
config folder) and an SD1.5 T2I-Adapter in TencentARC's original keys.
"""

import logging
from pathlib import Path

import torch

from engine.control.demo import (
    CONFIG_FOLDER,
    CONTROLNET_FOLDER,
    HINT_CHANNELS,
    _controlnet_from,
    _save_safetensors,
    controlnet_to_ldm,
)
from engine.demo.tiny import PARAMETER_JITTER, tiny_components


logger = logging.getLogger(__name__)

SD15_FILES = ("control_v11p_sd15_inpaint", "control_v11f1p_sd15_depth", "control_v11e_sd15_shuffle")
SDXL_FILE = "diffusers_xl_depth_tiny"
UNION_FILE = "controlnet-union-sdxl-promax"
UNION_CONFIG = "tiny-controlnet-union-sdxl"
ADAPTER_FILE = "t2iadapter_depth_sd15v2"
UNION_CONTROL_TYPES = 8  # ProMax: OpenPose, Depth, Soft Edge, Hard Edge, Normal, Segmentation, Tile, Inpaint


def write_tiny_control_families(models_dir: Path, seed: int = 10) -> list[Path]:
    """Write every family into `<models>/ControlNet` (and the union's config into `<models>/configs`)."""
    folder = Path(models_dir) / CONTROLNET_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    sd15, sdxl = tiny_components("sd15", seed)["unet"], tiny_components("sdxl", seed)["unet"]
    written = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in SD15_FILES:
            controlnet = _controlnet_from(sd15)
            path = folder / f"{name}.safetensors"
            _save_safetensors(controlnet_to_ldm(controlnet.state_dict(), controlnet.config), path)
            written.append(path)
        written.append(folder / f"{SDXL_FILE}.safetensors")
        _save_safetensors(_controlnet_from(sdxl).state_dict(), written[-1])
        written += _write_union(sdxl, Path(models_dir))
        written.append(folder / f"{ADAPTER_FILE}.safetensors")
        _save_safetensors(_original_adapter_keys(_adapter_for(sd15).state_dict()), written[-1])
    logger.info("wrote %d tiny ControlNet-family files under %s (random weights)", len(written), models_dir)
    return written


def _write_union(unet, models_dir: Path) -> list[Path]:
    from diffusers import ControlNetUnionModel

    base = ControlNetUnionModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)
    width = unet.config.block_out_channels[0]
    # Without diffusers' `_use_default_values` list, which would put the defaults back over these values.
    config = {key: value for key, value in base.config.items() if key != "_use_default_values"}
    union = ControlNetUnionModel.from_config({**config, "num_control_type": UNION_CONTROL_TYPES,
                                              "num_trans_channel": width, "num_proj_channel": width,
                                              "num_trans_head": 2})
    shapes = {key: value.shape for key, value in union.state_dict().items()}
    union.load_state_dict({key: value for key, value in base.state_dict().items() if shapes.get(key) == value.shape},
                          strict=False)  # the UNet's encoder weights; the union's own layers stay random
    _jitter(union)
    path = models_dir / CONTROLNET_FOLDER / f"{UNION_FILE}.safetensors"
    _save_safetensors(union.state_dict(), path)
    config = models_dir / CONFIG_FOLDER / UNION_CONFIG
    union.save_config(config)
    return [path, config]


def _adapter_for(unet):
    """An SD1.5 full T2I-Adapter whose four feature levels match the UNet's down blocks."""
    from diffusers import T2IAdapter

    adapter = T2IAdapter(in_channels=3, channels=list(unet.config.block_out_channels), num_res_blocks=2,
                         adapter_type="full_adapter")
    _jitter(adapter)
    return adapter.eval()


def _original_adapter_keys(state: dict[str, torch.Tensor], blocks: int = 2) -> dict[str, torch.Tensor]:
    """diffusers' `FullAdapter` keys → TencentARC's (`body.{level·blocks + block}.*`), as the published .pth
    files and sd-webui-controlnet name them."""
    original = {}
    for key, value in state.items():
        key = key.removeprefix("adapter.")
        if key.startswith("body."):
            _, level, rest = key.split(".", 2)
            if rest.startswith("resnets."):
                _, block, rest = rest.split(".", 2)
                key = f"body.{int(level) * blocks + int(block)}.{rest}"
            else:
                key = f"body.{int(level) * blocks}.{rest}"
        original[key] = value
    return original


def _jitter(model) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * PARAMETER_JITTER)
