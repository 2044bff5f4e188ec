"""depth_anything / depth_anything_v2 through the worker (`/controlnet/detect`) against the original network.

The reference is the Depth Anything V2 authors' own code (`depth_anything_v2`, the DepthAnything/Depth-Anything-V2
modules as published on PyPI by jkp-depth-anything-v2, installed --no-deps for the tests): its DINOv2 and DPT head
classes at a tiny width, random weights saved in the original checkpoint format, and its own transform, run the
way sd-webui-controlnet's `DepthAnythingDetector.__call__(colored=False)` runs them. V1's `DPT_DINOv2` is the same
network fed by the last four blocks (`get_intermediate_layers(x, 4)`), which the reference is told with
`intermediate_layer_idx`.
"""

import base64
import io
import types
from functools import partial

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from engine.control.api import detect
from engine.control.maps.annotators import DEPTH_ANYTHING_V1, DEPTH_ANYTHING_V2, DOWNLOAD_FOLDER
from engine.control.maps.demo import tiny_depth_anything
from engine.control.maps.depth_anything import convert_checkpoint


SIZE = 64


def _reference_network(version: int, seed: int):
    """The original DepthAnythingV2 module with a tiny DINOv2 (12 blocks, 64 wide, a 4 × 4 position grid, so
    that the position embeddings are interpolated) and DPT head."""
    from depth_anything_v2 import dinov2
    from depth_anything_v2.dinov2_layers import MemEffAttention, NestedTensorBlock
    from depth_anything_v2.dpt import DepthAnythingV2, DPTHead

    torch.manual_seed(seed)
    network = DepthAnythingV2(encoder="vits", features=8, out_channels=[8, 16, 24, 32])
    network.pretrained = dinov2.DinoVisionTransformer(
        img_size=56, patch_size=14, embed_dim=64, depth=12, num_heads=1, mlp_ratio=4, init_values=1.0,
        block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention), ffn_layer="mlp", block_chunks=0,
        interpolate_offset=0.1)
    network.depth_head = DPTHead(64, 8, False, out_channels=[8, 16, 24, 32])
    network.intermediate_layer_idx = {"vits": 4 if version == 1 else [2, 5, 8, 11]}
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return network.eval()


def _reference_map(network, image: np.ndarray) -> np.ndarray:
    """sd-webui-controlnet's `DepthAnythingDetector.__call__(image, colored=False)` with the reference's transform."""
    from depth_anything_v2.util.transform import NormalizeImage, PrepareForNet, Resize
    from torchvision.transforms import Compose

    transform = Compose([
        Resize(width=518, height=518, resize_target=False, keep_aspect_ratio=True, ensure_multiple_of=14,
               resize_method="lower_bound", image_interpolation_method=cv2.INTER_CUBIC),
        NormalizeImage(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        PrepareForNet(),
    ])
    height, width = image.shape[:2]
    pixels = transform({"image": cv2.cvtColor(image, cv2.COLOR_BGR2RGB) / 255.0})["image"]
    with torch.no_grad():
        depth = network(torch.from_numpy(pixels)[None])
    depth = torch.nn.functional.interpolate(depth[None], (height, width), mode="bilinear", align_corners=False)[0, 0]
    return ((depth - depth.min()) / (depth.max() - depth.min()) * 255.0).numpy().astype(np.uint8)


def _image() -> np.ndarray:
    pixels = np.random.default_rng(3).integers(0, 255, (SIZE, SIZE, 3)).astype(np.uint8)
    pixels[10:40, 8:50] = (240, 200, 30)
    return pixels


def _b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _write(root, version: int, weights: dict):
    from safetensors.torch import save_file

    folder = root / DOWNLOAD_FOLDER / ("depth_anything" if version == 1 else "depth_anything_v2")
    folder.mkdir(parents=True, exist_ok=True)
    if version == 1:
        torch.save(weights, folder / DEPTH_ANYTHING_V1)
    else:
        save_file({key: value.contiguous() for key, value in weights.items()}, folder / DEPTH_ANYTHING_V2)


@pytest.mark.parametrize(("module", "version"), [("depth_anything", 1), ("depth_anything_v2", 2)])
def test_depth_anything_matches_the_original_network(tmp_path, module, version):
    network = _reference_network(version, seed=version)
    _write(tmp_path, version, {key: value.clone() for key, value in network.state_dict().items()})
    image = _image()
    body = detect(types.SimpleNamespace(root=tmp_path), {
        "controlnet_module": module, "controlnet_input_images": [_b64(image)], "controlnet_processor_res": SIZE})
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).convert("RGB"))

    expected = _reference_map(network, image)
    assert expected.std() > 3  # a map with structure, not a flat one
    np.testing.assert_array_equal(got, np.repeat(expected[:, :, None], 3, axis=2))


@pytest.mark.parametrize("version", [1, 2])
def test_the_demo_checkpoint_converts_back_to_transformers_keys(version):
    """The demo writer's inverse mapping and the loader's mapping undo each other, tensor for tensor."""
    from transformers import DepthAnythingForDepthEstimation

    from engine.control.maps.depth_anything import depth_anything_config

    original = tiny_depth_anything(version)
    assert all(key.startswith(("pretrained.", "depth_head.")) for key in original)
    config = depth_anything_config(original, version)
    expected_keys = set(DepthAnythingForDepthEstimation(config).state_dict())
    converted = convert_checkpoint(original)
    assert set(converted) == expected_keys
    qkv = original["pretrained.blocks.3.attn.qkv.weight"]
    assert torch.equal(converted["backbone.encoder.layer.3.attention.k_proj.weight"], qkv[64:128])
    assert config.backbone_config.out_indices == ([9, 10, 11, 12] if version == 1 else [3, 6, 9, 12])
