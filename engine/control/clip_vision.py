"""The CLIP vision encoders the IP-Adapter modules run, as sd-webui-controlnet v1.1.455 runs them
(`annotator/clipvision/__init__.py`, GPL-3.0; re-implemented here on transformers' `CLIPVisionModelWithProjection`).

sd-webui-controlnet keeps them as `annotator/downloads/clip_vision/clip_h.pth` (OpenCLIP ViT-H/14, the
`image_encoder` of h94/IP-Adapter) and `clip_g.pth` (OpenCLIP ViT-bigG/14): plain state dicts of
transformers' model, whose config it hard-codes by file name. Here the family's fixed choices (attention heads,
activation) come from the file name, the sizes from the weights, so that a smaller file of the same family (the
demo models') loads too.

An image is squashed to 224 × 224 (area interpolation, no aspect crop), then CLIP-normalised. The adapters read
`image_embeds` (plain IP-Adapter) or the penultimate hidden states (Plus, Full-face, FaceID Plus).
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch


logger = logging.getLogger(__name__)

FOLDER = "clip_vision"
INPUT_SIZE = 224
# OpenAI CLIP's normalisation, which sd-webui-controlnet's `CLIPImageProcessor` and IP-Adapter use.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipFamily:
    """What sd-webui-controlnet's hard-coded config fixes that the weights do not tell."""

    file: str
    heads: int
    activation: str


FAMILIES = {
    "clip_h": ClipFamily("clip_h.pth", heads=16, activation="gelu"),
    "clip_g": ClipFamily("clip_g.pth", heads=16, activation="gelu"),
}


@dataclass(frozen=True)
class ClipFeatures:
    """One image's CLIP features: `image_embeds` (1, projection_dim) and the penultimate hidden states
    (1, tokens, hidden_size)."""

    image_embeds: torch.Tensor
    penultimate: torch.Tensor


class ClipVisionEncoder(torch.nn.Module):
    """A CLIP vision tower with projection; `encode(rgb)` gives the features IP-Adapters read."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self._negative: ClipFeatures | None = None

    @property
    def projection_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, rgb: np.ndarray) -> ClipFeatures:
        """Features of an HWC uint8 RGB image."""
        squashed = cv2.resize(np.ascontiguousarray(rgb[:, :, :3]), (INPUT_SIZE, INPUT_SIZE),
                              interpolation=cv2.INTER_AREA)
        pixels = torch.from_numpy(squashed).float().div(255.0).permute(2, 0, 1)[None]
        mean, std = torch.tensor(MEAN).reshape(1, 3, 1, 1), torch.tensor(STD).reshape(1, 3, 1, 1)
        return self.encode_pixels((pixels - mean) / std)

    @torch.no_grad()
    def encode_pixels(self, pixel_values: torch.Tensor) -> ClipFeatures:
        """Features of normalised pixel values (1, 3, 224, 224). All zeros is IP-Adapter Plus's negative image
        (its reference code and diffusers' `encode_image` encode `zeros_like(image)`)."""
        parameter = next(self.model.parameters())
        output = self.model(pixel_values.to(parameter.device, parameter.dtype), output_hidden_states=True)
        return ClipFeatures(output.image_embeds.float(), output.hidden_states[-2].float())

    def negative(self) -> ClipFeatures:
        """The all-zero image's features (IP-Adapter Plus's negative), computed once per loaded encoder."""
        if self._negative is None:
            self._negative = self.encode_pixels(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
        return self._negative


def load_clip_vision(folder: Path, name: str) -> ClipVisionEncoder:
    """`<folder>/clip_h.pth` or `clip_g.pth` on the CPU in fp32 (the annotator store moves it).

    Raises:
        ValueError: the file is not a CLIP vision model's state dict.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    family = FAMILIES[name]
    state = torch.load(Path(folder) / family.file, map_location="cpu", weights_only=True)
    # Older exports carry the position ids as a buffer; transformers computes them.
    state = {key: value for key, value in state.items() if not key.endswith("position_ids")}
    config = CLIPVisionConfig(**_sizes(state), num_attention_heads=family.heads, hidden_act=family.activation,
                              layer_norm_eps=1e-5)
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    model.load_state_dict(state, strict=True, assign=True)
    embeddings = model.vision_model.embeddings  # its position ids are a non-persistent buffer: still on meta
    embeddings.register_buffer("position_ids", torch.arange(embeddings.num_positions)[None], persistent=False)
    logger.info("CLIP vision %s: %d layers, width %d", name, config.num_hidden_layers, config.hidden_size)
    return ClipVisionEncoder(model.eval().requires_grad_(False))


def _sizes(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """The architecture's sizes from the weights' shapes."""
    patches = state["vision_model.embeddings.patch_embedding.weight"]
    positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
    layers = 1 + max(int(key.split(".")[3]) for key in state if key.startswith("vision_model.encoder.layers."))
    patch = patches.shape[-1]
    return {"hidden_size": patches.shape[0], "patch_size": patch, "image_size": round((positions - 1) ** 0.5) * patch,
            "num_hidden_layers": layers, "projection_dim": state["visual_projection.weight"].shape[0],
            "intermediate_size": state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            "num_channels": patches.shape[1]}
