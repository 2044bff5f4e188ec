"""Convert diffusers state dicts to the original LDM/SGM single-file key layout of A1111 checkpoints."""

from collections.abc import Callable, Mapping

import torch

from engine.errors import choices


# Where each model sits inside an original single file (CompVis `ldm` for SD1.5, Stability `sgm` for SDXL);
# diffusers' `from_single_file` finds the models by these prefixes.
SINGLE_FILE_PREFIXES = {
    "sd15": {
        "unet": "model.diffusion_model.",
        "vae": "first_stage_model.",
        "text_encoder": "cond_stage_model.transformer.",
    },
    "sdxl": {
        "unet": "model.diffusion_model.",
        "vae": "first_stage_model.",
        "text_encoder": "conditioner.embedders.0.transformer.",
        "text_encoder_2": "conditioner.embedders.1.model.",
    },
    # The SDXL refiner conditions on OpenCLIP-G alone, as its first embedder.
    "sdxl_refiner": {
        "unet": "model.diffusion_model.",
        "vae": "first_stage_model.",
        "text_encoder_2": "conditioner.embedders.0.model.",
    },
}

_UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# LDM's ResBlock keeps its layers in Sequentials: in_layers = (GroupNorm, SiLU, Conv),
# out_layers = (GroupNorm, SiLU, Dropout, Conv), emb_layers = (SiLU, Linear); hence the indices.
_UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
# Whether a diffusers UNet block type holds a SpatialTransformer next to each resnet (LDM slot ".1").
_UNET_BLOCK_HAS_ATTENTION = {
    "DownBlock2D": False,
    "CrossAttnDownBlock2D": True,
    "UpBlock2D": False,
    "CrossAttnUpBlock2D": True,
}

_VAE_TOP_LEVEL = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_out": "encoder.conv_out",
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_out": "decoder.conv_out",
    "decoder.conv_norm_out": "decoder.norm_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}
_VAE_RESNET_PARTS = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
_VAE_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# LDM's VAE attention projects with 1x1 convolutions where diffusers uses Linear layers: same numbers,
# weights shaped (C, C, 1, 1) instead of (C, C).
_VAE_CONV_1X1_WEIGHTS = tuple(f"mid.attn_1.{name}.weight" for name in ("q", "k", "v", "proj_out"))

_CLIP_TOP_LEVEL_NAMES = ("embeddings", "encoder", "final_layer_norm")

_OPEN_CLIP_TOP_LEVEL = {
    "embeddings.token_embedding": "token_embedding",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm": "ln_final",
    "text_projection.weight": "text_projection",
}
_OPEN_CLIP_LAYER_PARTS = {
    "self_attn": "attn",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
# torch.nn.MultiheadAttention (OpenCLIP's attention) packs the projections as one in_proj, q then k then v.
_QKV_ORDER = ("q_proj", "k_proj", "v_proj")

StateDict = Mapping[str, torch.Tensor]


def unet_to_ldm(state_dict: StateDict, config: Mapping) -> dict[str, torch.Tensor]:
    """A `UNet2DConditionModel` state dict under LDM's names (without the `model.diffusion_model.` prefix)."""
    return _rename(state_dict, _unet_prefix_map(config), "unet")


def vae_to_ldm(state_dict: StateDict, config: Mapping) -> dict[str, torch.Tensor]:
    """An `AutoencoderKL` state dict under LDM's names (without `first_stage_model.`), attention as 1x1 convs."""
    renamed = _rename(state_dict, _vae_prefix_map(config), "vae")
    return {
        key: tensor[..., None, None] if key.endswith(_VAE_CONV_1X1_WEIGHTS) and tensor.ndim == 2 else tensor
        for key, tensor in renamed.items()
    }


def clip_to_ldm(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """A `CLIPTextModel` state dict as the `transformer.` part of A1111 files: `text_model.*`.

    transformers >= 5.6 dropped the `text_model.` level from `CLIPTextModel`; real files keep it.
    """
    converted = {}
    for key, tensor in state_dict.items():
        name = key.removeprefix("text_model.")
        if name.split(".", 1)[0] not in _CLIP_TOP_LEVEL_NAMES:
            raise ValueError(f"text_encoder: no LDM name for {key!r} (a CLIP-L text model has no projection)")
        converted["text_model." + name] = tensor
    return converted


def open_clip_to_ldm(state_dict: StateDict, num_layers: int) -> dict[str, torch.Tensor]:
    """A `CLIPTextModelWithProjection` state dict in OpenCLIP's layout (SDXL's `conditioner.embedders.1.model.`).

    Args:
        state_dict: the model's state dict (keys `text_model.*` and `text_projection.weight`).
        num_layers: `config.num_hidden_layers`, the number of transformer layers to rename.
    """
    flat = {key.removeprefix("text_model."): tensor for key, tensor in state_dict.items()}
    prefix_map = dict(_OPEN_CLIP_TOP_LEVEL)
    for layer in range(num_layers):
        prefix_map |= _with_parts(
            f"encoder.layers.{layer}", f"transformer.resblocks.{layer}", _OPEN_CLIP_LAYER_PARTS
        )
    renamed = _rename(_fuse_qkv(flat), prefix_map, "text_encoder_2")
    # OpenCLIP computes `pooled @ text_projection`; a Linear computes `pooled @ weight.T`.
    renamed["text_projection"] = renamed["text_projection"].T.contiguous()
    return renamed


def single_file_state_dict(family: str, models: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """All models of a pipeline merged under the key names of a real A1111 single-file checkpoint.

    Args:
        family: "sd15", "sdxl" or "sdxl_refiner".
        models: diffusers/transformers modules by pipeline component name ("unet", "vae", "text_encoder"...).
    """
    if family not in SINGLE_FILE_PREFIXES:
        raise ValueError(f"unknown model family {family!r}; valid: {choices(SINGLE_FILE_PREFIXES)}")
    merged: dict[str, torch.Tensor] = {}
    for name, prefix in SINGLE_FILE_PREFIXES[family].items():
        converted = _CONVERTERS[name](models[name])
        merged |= {prefix + key: tensor for key, tensor in converted.items()}
    return merged


def _unet_prefix_map(config: Mapping) -> dict[str, str]:
    """diffusers → LDM name prefixes, walking the blocks in the order LDM numbers them."""
    per_level = config["layers_per_block"]
    last_level = len(config["down_block_types"]) - 1
    mapping = dict(_UNET_TOP_LEVEL)
    ldm_index = 1  # input_blocks.0 is conv_in
    for level, block_type in enumerate(config["down_block_types"]):
        _require_known_block(block_type)
        for layer in range(per_level):
            mapping |= _with_parts(
                f"down_blocks.{level}.resnets.{layer}", f"input_blocks.{ldm_index}.0", _UNET_RESNET_PARTS
            )
            mapping[f"down_blocks.{level}.attentions.{layer}"] = f"input_blocks.{ldm_index}.1"
            ldm_index += 1
        if level < last_level:
            mapping[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{ldm_index}.0.op"
            ldm_index += 1
    mapping |= _with_parts("mid_block.resnets.0", "middle_block.0", _UNET_RESNET_PARTS)
    mapping["mid_block.attentions.0"] = "middle_block.1"
    mapping |= _with_parts("mid_block.resnets.1", "middle_block.2", _UNET_RESNET_PARTS)
    ldm_index = 0
    for level, block_type in enumerate(config["up_block_types"]):
        _require_known_block(block_type)
        for layer in range(per_level + 1):
            mapping |= _with_parts(
                f"up_blocks.{level}.resnets.{layer}", f"output_blocks.{ldm_index}.0", _UNET_RESNET_PARTS
            )
            mapping[f"up_blocks.{level}.attentions.{layer}"] = f"output_blocks.{ldm_index}.1"
            ldm_index += 1
        if level < last_level:
            # The upsampler joins the level's last output block, after its attention if it has one.
            slot = 2 if _UNET_BLOCK_HAS_ATTENTION[block_type] else 1
            mapping[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{ldm_index - 1}.{slot}.conv"
    return mapping


def _vae_prefix_map(config: Mapping) -> dict[str, str]:
    """diffusers → LDM name prefixes for the encoder, decoder and their mid blocks."""
    per_level = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    mapping = dict(_VAE_TOP_LEVEL)
    for level in range(levels):
        for layer in range(per_level):
            mapping |= _with_parts(
                f"encoder.down_blocks.{level}.resnets.{layer}",
                f"encoder.down.{level}.block.{layer}",
                _VAE_RESNET_PARTS,
            )
        mapping[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = f"encoder.down.{level}.downsample.conv"
        # LDM numbers the decoder's levels from the lowest resolution up (up.0 runs last); diffusers in run order.
        ldm_level = levels - 1 - level
        for layer in range(per_level + 1):
            mapping |= _with_parts(
                f"decoder.up_blocks.{level}.resnets.{layer}",
                f"decoder.up.{ldm_level}.block.{layer}",
                _VAE_RESNET_PARTS,
            )
        mapping[f"decoder.up_blocks.{level}.upsamplers.0.conv"] = f"decoder.up.{ldm_level}.upsample.conv"
    for side in ("encoder", "decoder"):
        for index in (0, 1):
            mapping |= _with_parts(
                f"{side}.mid_block.resnets.{index}", f"{side}.mid.block_{index + 1}", _VAE_RESNET_PARTS
            )
        mapping |= _with_parts(f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1", _VAE_ATTENTION_PARTS)
    return mapping


def _with_parts(diffusers_prefix: str, ldm_prefix: str, parts: Mapping[str, str]) -> dict[str, str]:
    return {f"{diffusers_prefix}.{ours}": f"{ldm_prefix}.{theirs}" for ours, theirs in parts.items()}


def _require_known_block(block_type: str) -> None:
    if block_type not in _UNET_BLOCK_HAS_ATTENTION:
        raise ValueError(
            f"unet: no LDM layout for block {block_type!r}; valid: {choices(_UNET_BLOCK_HAS_ATTENTION)}"
        )


def _rename(state_dict: StateDict, prefix_map: Mapping[str, str], model: str) -> dict[str, torch.Tensor]:
    """Rename every key by its longest dotted prefix found in prefix_map; an unmapped key is an error."""
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        heads = (".".join(parts[:cut]) for cut in range(len(parts), 0, -1))
        head = next((head for head in heads if head in prefix_map), None)
        if head is None:
            raise ValueError(f"{model}: no LDM name for {key!r}")
        ldm_key = prefix_map[head] + key[len(head) :]
        if ldm_key in renamed:
            raise ValueError(f"{model}: two weights map to {ldm_key!r}")
        renamed[ldm_key] = tensor
    return renamed


def _fuse_qkv(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Replace each attention's q/k/v projections by one `in_proj_weight` / `in_proj_bias`."""
    fused: dict[str, torch.Tensor] = {}
    pieces: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        parts = key.rsplit(".", 2)  # e.g. ["encoder.layers.0.self_attn", "q_proj", "weight"]
        if len(parts) == 3 and parts[1] in _QKV_ORDER:
            owner, projection, leaf = parts
            pieces.setdefault((owner, leaf), {})[projection] = tensor
        else:
            fused[key] = tensor
    for (owner, leaf), found in pieces.items():
        missing = [name for name in _QKV_ORDER if name not in found]
        if missing:
            raise ValueError(f"text_encoder_2: {owner} lacks {', '.join(missing)} {leaf}")
        fused[f"{owner}.in_proj_{leaf}"] = torch.cat([found[name] for name in _QKV_ORDER])
    return fused


_CONVERTERS: dict[str, Callable[[torch.nn.Module], dict[str, torch.Tensor]]] = {
    "unet": lambda model: unet_to_ldm(model.state_dict(), model.config),
    "vae": lambda model: vae_to_ldm(model.state_dict(), model.config),
    "text_encoder": lambda model: clip_to_ldm(model.state_dict()),
    "text_encoder_2": lambda model: open_clip_to_ldm(model.state_dict(), model.config.num_hidden_layers),
}
