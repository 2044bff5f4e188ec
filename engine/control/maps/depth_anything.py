"""Depth Anything (V1 and V2) as sd-webui-controlnet v1.1.455 runs it (`annotator/depth_anything.py`,
`annotator/depth_anything_v2.py`), with transformers' `DepthAnythingForDepthEstimation` doing the network work.

sd-webui-controlnet loads the original checkpoints (`depth_anything_vitl14.pth`, LiheYoung/Depth-Anything;
`depth_anything_v2_vitl.safetensors`, DepthAnything/Depth-Anything-V2 re-saved as safetensors), whose keys
follow the original `DPT_DINOv2` / `DepthAnythingV2` modules (`pretrained.*` for DINOv2, `depth_head.*` for the
DPT head). `convert_checkpoint` renames them to transformers' layout (the renames transformers'
`convert_depth_anything_to_hf.py` applies, written out here as a table) and reads the architecture from the
tensor shapes, so the small and base checkpoints load too.

The two versions differ only in which encoder layers feed the head: V1 the last four, V2 fixed ones per size.

One numerical difference between transformers and the original DINOv2 is undone: for a non-square input the
original interpolates the position embeddings with a scale factor of (patches + 0.1) / 37 (DINOv2's
`interpolate_pos_encoding`, Apache-2.0), transformers to the exact patch count; `_original_position_embeddings`
reproduces the original on our model instance.
"""

import math
import re
from types import MethodType

import cv2
import numpy as np
import torch


PATCH = 14
INPUT_SIZE = 518  # `Resize(width=518, height=518, keep_aspect_ratio, ensure_multiple_of=14, "lower_bound")`
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
POSITION_OFFSET = 0.1  # DINOv2's `interpolate_offset`
HEAD_WIDTH = 64  # DINOv2's attention head width: heads = hidden size / 64
# V2 `DepthAnythingV2.intermediate_layer_idx` by encoder depth (vits and vitb 12, vitl 24, vitg 40 blocks),
# 0-based block indices.
V2_LAYERS = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23), 40: (9, 19, 29, 39)}

# original key pattern → transformers key. The refinenets run in the opposite order in transformers.
_RENAMES = (
    (r"pretrained\.cls_token", "backbone.embeddings.cls_token"),
    (r"pretrained\.mask_token", "backbone.embeddings.mask_token"),
    (r"pretrained\.pos_embed", "backbone.embeddings.position_embeddings"),
    (r"pretrained\.patch_embed\.proj\.", "backbone.embeddings.patch_embeddings.projection."),
    (r"pretrained\.blocks\.(\d+)\.ls(\d)\.gamma", r"backbone.encoder.layer.\1.layer_scale\2.lambda1"),
    (r"pretrained\.blocks\.(\d+)\.(norm\d|mlp\.fc\d)\.", r"backbone.encoder.layer.\1.\2."),
    (r"pretrained\.blocks\.(\d+)\.attn\.proj\.", r"backbone.encoder.layer.\1.attention.o_proj."),
    (r"pretrained\.norm\.", "backbone.layernorm."),
    (r"depth_head\.projects\.(\d)\.", r"neck.reassemble_stage.layers.\1.projection."),
    (r"depth_head\.resize_layers\.(\d)\.", r"neck.reassemble_stage.layers.\1.resize."),
    (r"depth_head\.scratch\.layer(\d)_rn\.", lambda m: f"neck.convs.{int(m[1]) - 1}."),
    (r"depth_head\.scratch\.refinenet(\d)\.out_conv\.", lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.projection."),
    (r"depth_head\.scratch\.refinenet(\d)\.resConfUnit(\d)\.conv(\d)\.",
     lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.residual_layer{m[2]}.convolution{m[3]}."),
    (r"depth_head\.scratch\.output_conv1\.", "head.conv1."),
    (r"depth_head\.scratch\.output_conv2\.0\.", "head.conv2."),
    (r"depth_head\.scratch\.output_conv2\.2\.", "head.conv3."),
)
_QKV = re.compile(r"pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)")


def _renamed(key: str) -> str:
    for pattern, replacement in _RENAMES:
        renamed, count = re.subn(f"^{pattern}", replacement, key)
        if count:
            return renamed
    raise KeyError(f"unexpected Depth Anything checkpoint key {key!r}")


def depth_anything_config(original: dict, version: int):
    """The `DepthAnythingConfig` of an original checkpoint, read from its tensor shapes."""
    from transformers import DepthAnythingConfig, Dinov2Config

    hidden = original["pretrained.pos_embed"].shape[-1]
    layers = 1 + max(int(m[1]) for key in original if (m := re.match(r"pretrained\.blocks\.(\d+)\.", key)))
    positions = original["pretrained.pos_embed"].shape[1] - 1
    blocks = range(layers - 4, layers) if version == 1 else V2_LAYERS[layers]
    out_indices = [block + 1 for block in blocks]  # transformers' hidden state 0 is the embeddings
    backbone = Dinov2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // HEAD_WIDTH,
        mlp_ratio=original["pretrained.blocks.0.mlp.fc1.weight"].shape[0] // hidden, patch_size=PATCH,
        image_size=math.isqrt(positions) * PATCH, out_indices=out_indices, apply_layernorm=True,
        reshape_hidden_states=False)
    return DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=hidden, patch_size=PATCH,
        neck_hidden_sizes=[original[f"depth_head.projects.{i}.weight"].shape[0] for i in range(4)],
        fusion_hidden_size=original["depth_head.scratch.layer1_rn.weight"].shape[0],
        head_hidden_size=original["depth_head.scratch.output_conv2.0.weight"].shape[0],
        depth_estimation_type="relative")


def convert_checkpoint(original: dict) -> dict:
    """The original state dict in transformers' key layout (qkv split into query, key and value)."""
    converted = {}
    for key, value in original.items():
        if match := _QKV.match(key):
            block, kind = match.groups()
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                converted[f"backbone.encoder.layer.{block}.attention.{name}.{kind}"] = part
        else:
            converted[_renamed(key)] = value
    return converted


def load_depth_anything(original: dict, version: int):
    """transformers' model with the checkpoint's weights, built on the meta device (never random-initialised)."""
    from transformers import DepthAnythingForDepthEstimation

    config = depth_anything_config(original, version)
    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(config)
    model.load_state_dict(convert_checkpoint(original), strict=True, assign=True)
    embeddings = model.backbone.embeddings
    embeddings.interpolate_pos_encoding = MethodType(_original_position_embeddings, embeddings)
    return model.eval()


def _original_position_embeddings(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """DINOv2's own interpolation (facebookresearch/dinov2 `DinoVisionTransformer.interpolate_pos_encoding`):
    bicubic with scale factor (patches + 0.1) / grid, not the exact output size transformers uses."""
    patches, positions = embeddings.shape[1] - 1, self.position_embeddings.shape[1] - 1
    if patches == positions and height == width:
        return self.position_embeddings
    grid = math.isqrt(positions)
    table = self.position_embeddings.float()
    patch_table = table[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    scale = ((height // PATCH + POSITION_OFFSET) / grid, (width // PATCH + POSITION_OFFSET) / grid)
    patch_table = torch.nn.functional.interpolate(patch_table, scale_factor=scale, mode="bicubic",
                                                  antialias=False)
    patch_table = patch_table.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])
    return torch.cat((table[:, :1], patch_table), dim=1).to(self.position_embeddings.dtype)


def network_input(image: np.ndarray) -> np.ndarray:
    """sd-webui-controlnet's transform: the RGB input goes through `COLOR_BGR2RGB` (so the network sees BGR),
    /255, the short side up to 518 rounded to a multiple of 14 (cubic, in float64), ImageNet normalisation.
    Returns NCHW float32."""
    pixels = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) / 255.0
    height, width = pixels.shape[:2]
    scale = max(INPUT_SIZE / height, INPUT_SIZE / width)
    size = [_multiple_of_patch(scale * side, INPUT_SIZE) for side in (width, height)]
    pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_CUBIC)
    pixels = (pixels - MEAN) / STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None]).astype(np.float32)


def _multiple_of_patch(length: float, minimum: int) -> int:
    """`Resize.constrain_to_multiple_of` for "lower_bound": round, but never below the minimum."""
    rounded = int(np.round(length / PATCH) * PATCH)
    return rounded if rounded >= minimum else int(np.ceil(length / PATCH) * PATCH)


class DepthAnythingDetector:
    """`DepthAnythingDetector.__call__(colored=False)`: relative depth, resized back bilinearly, min-max
    normalised to 0–255 and truncated to uint8 (a flat depth, which sd-webui-controlnet divides by zero, is
    black)."""

    def __init__(self, model):
        self.model = model

    def to(self, device):
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        parameter = next(self.model.parameters())
        pixels = torch.from_numpy(network_input(image)).to(parameter.device, parameter.dtype)
        depth = self.model(pixel_values=pixels).predicted_depth
        depth = torch.nn.functional.interpolate(depth[None].float(), (height, width), mode="bilinear",
                                                align_corners=False)[0, 0]
        span = depth.max() - depth.min()
        if span == 0:
            return np.zeros((height, width), np.uint8)
        depth = (depth - depth.min()) / span * 255.0
        return depth.cpu().numpy().astype(np.uint8)
