"""Tiny random-weight IP-Adapters in h94's single-file formats for the tiny checkpoints. The CLIP vision
encoders they read are annotators (`engine.control.maps.demo`); FaceID's buffalo_l pack is ReActor's demo one
(`engine.faceswap.demo`).

The files keep the real key layout (`image_proj.*` + `ip_adapter.{n}.to_k_ip.weight`, n = 1, 3, 5… over the
UNet's cross-attentions), at tiny widths: the CLIP widths of the tiny encoders (projection 16 for clip_h, 24
for clip_g; hidden 32), Resamplers of width 64 with one 64-wide head (diffusers' converter reads the heads as
`to_q` rows // 64), 16 queries, 4 tokens for the plain and FaceID projections as in the real files.
"""

from pathlib import Path

import torch

from engine.control.demo import (
    CONTROLNET_FOLDER,
    _ip_attention_weights,
    _resampler_weights,
    _save_safetensors,
)
from engine.control.maps.demo import TINY_CLIP_PROJECTION
from engine.demo.files import torch_save_atomically
from engine.demo.tiny import tiny_components


CLIP_HIDDEN = 32  # the tiny encoders' width (`engine.control.maps.demo._clip_vision`)
FACE_EMBEDDING = 512  # insightface's ArcFace vector
PLAIN_TOKENS = 4
FACE_ID_HIDDEN = 1024  # FaceID's `proj.0`: 512 → 2 × 512, as in the real files

# file → (checkpoint family, adapter family, CLIP width the projection reads). sd15 files are safetensors
# (h94 publishes both formats), FaceID files pickles, as h94/IP-Adapter-FaceID publishes them.
TINY_ADAPTERS = {
    "ip-adapter_sd15.safetensors": ("sd15", "plain", TINY_CLIP_PROJECTION["clip_h"]),
    "ip-adapter-plus_sd15.safetensors": ("sd15", "plus", CLIP_HIDDEN),
    "ip-adapter-plus-face_sd15.safetensors": ("sd15", "plus", CLIP_HIDDEN),
    "ip-adapter_sdxl_vit-h.safetensors": ("sdxl", "plain", TINY_CLIP_PROJECTION["clip_h"]),
    "ip-adapter-plus_sdxl_vit-h.safetensors": ("sdxl", "plus", CLIP_HIDDEN),
    "ip-adapter_sdxl.safetensors": ("sdxl", "plain", TINY_CLIP_PROJECTION["clip_g"]),
    "ip-adapter-faceid_sd15.bin": ("sd15", "faceid", None),
    "ip-adapter-faceid-plusv2_sd15.bin": ("sd15", "faceid_plus", CLIP_HIDDEN),
}


def write_tiny_ip_adapters(models_dir: Path, seed: int = 0) -> list[Path]:
    """Every file of `TINY_ADAPTERS` under `<models>/ControlNet/`."""
    folder = Path(models_dir) / CONTROLNET_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    unets = {family: tiny_components(family, seed)["unet"] for family in ("sd15", "sdxl")}
    written = []
    for offset, (name, (family, kind, width)) in enumerate(TINY_ADAPTERS.items()):
        unet = unets[family]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 10 + offset)
            weights = {"image_proj": _projection(kind, width, unet.config.cross_attention_dim),
                       "ip_adapter": _ip_attention_weights(unet)}
        path = folder / name
        if path.suffix == ".safetensors":
            _save_safetensors({f"{part}.{key}": value for part, tensors in weights.items()
                               for key, value in tensors.items()}, path)
        else:
            torch_save_atomically(weights, path)
        written.append(path)
    return written


def _projection(kind: str, width: int | None, cross: int) -> dict[str, torch.Tensor]:
    """The `image_proj` state dict of an IP-Adapter family, in the original (h94) key layout."""
    if kind == "plus":
        return _resampler_weights(cross, embedding=width)
    if kind == "plain":  # `ImageProjModel`: Linear(width → 4 tokens) + LayerNorm
        shapes = {"proj.weight": (PLAIN_TOKENS * cross, width), "proj.bias": (PLAIN_TOKENS * cross,),
                  "norm.weight": (cross,), "norm.bias": (cross,)}
        return _random(shapes)
    # FaceID (`MLPProjModelFaceId`) and FaceID Plus (`ProjModelFaceIdPlus`): an MLP from the face embedding to
    # 4 tokens + LayerNorm; Plus adds a perceiver over CLIP's hidden states (no latents: the ID tokens query).
    shapes = {"proj.0.weight": (FACE_ID_HIDDEN, FACE_EMBEDDING), "proj.0.bias": (FACE_ID_HIDDEN,),
              "proj.2.weight": (PLAIN_TOKENS * cross, FACE_ID_HIDDEN), "proj.2.bias": (PLAIN_TOKENS * cross,),
              "norm.weight": (cross,), "norm.bias": (cross,)}
    weights = _random(shapes)
    if kind == "faceid_plus":
        perceiver = _resampler_weights(cross, embedding=width, dim=cross, inner=64)
        perceiver.pop("latents")
        weights |= {f"perceiver_resampler.{key}": value for key, value in perceiver.items()}
    return weights


def _random(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    # LayerNorm gains (the 1-d weights) near 1, everything else near 0.
    return {key: torch.randn(shape) * 0.1 + (1.0 if key.endswith("weight") and len(shape) == 1 else 0.0)
            for key, shape in shapes.items()}
