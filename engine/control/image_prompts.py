"""IP-Adapter units made ready before denoising: the adapter's weights and what its projection reads for the
prompt rows and for the negative rows, as sd-webui-controlnet v1.1.455 computes them
(`scripts/ipadapter/ipadapter_model.py`, `scripts/preprocessor/legacy/processor.py`; GPL-3.0, re-implemented):

- plain: CLIP `image_embeds` of the image; negative: zeros.
- Plus / Full face: CLIP's penultimate hidden states; negative: those of an all-zero (normalised) image, as
  IP-Adapter's reference code and diffusers' `encode_image` compute them (sd-webui-controlnet loads the same
  tensors precomputed for ViT-H).
- FaceID: buffalo_l's normed embedding of the largest face; negative: zeros.
- FaceID Plus: that embedding and CLIP ViT-H's hidden states of the whole image; negative: zeros and the
  all-zero image's hidden states. v2 files ("v2" in the name) add the ID tokens back (`shortcut`).
- InstantID: antelopev2's raw embedding; negative: zeros (its Resampler makes the negative tokens).

The projection itself is diffusers' class inside the UNet (`engine.control.ip_adapter_install`), so these
inputs go in `added_cond_kwargs["image_embeds"]` at each UNet call. A unit given several images has one input
row per image; their projected tokens are averaged (sd-webui-controlnet `ImageEmbed.average_of`), where
diffusers would concatenate them.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.control.instantid import EMBEDDING_SIZE
from engine.control.ip_adapters import (
    FACE_ID,
    FACE_ID_PLUS,
    INSTANT_ID,
    PLAIN,
    AdapterFile,
    check_module_fits,
    describe_adapter,
)
from engine.control.units import ControlUnit


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImagePrompt:
    """One IP-Adapter unit, ready: the adapter and its projection's input for each side of CFG, one row per
    input image."""

    unit: ControlUnit
    weights: dict  # {"image_proj", "ip_adapter"} on the device
    adapter: AdapterFile
    cond: torch.Tensor  # (images, *input): CLIP features or face embeddings
    uncond: torch.Tensor
    clip_cond: torch.Tensor | None = None  # FaceID Plus: CLIP hidden states (images, tokens, width)
    clip_uncond: torch.Tensor | None = None


def prepare_image_prompt(unit: ControlUnit, path: Path, models, images: Sequence[np.ndarray]) -> ImagePrompt:
    """Load the unit's adapter, check its module fits it, and encode its images (HWC uint8 RGB each).

    Raises:
        RequestError: a module that does not fit the model; no face on a FaceID image.
        NotFoundError: a missing image encoder or face pack.
    """
    module = unit.module
    weights = models.ip_adapter(path)
    adapter = describe_adapter(weights, Path(path).name)
    encoder = models.annotator(module.image_encoder, unit.field("module")) if module.image_encoder else None
    widths = (encoder.projection_dim, encoder.hidden_size) if encoder is not None else None
    check_module_fits(adapter, module.name, widths, unit.field("model"), unit.model)
    face = None
    if module.face_pack is not None:
        analyser = models.face_analyser(module.face_pack)
        fields = [unit.field("image")] if len(images) == 1 else [f"{unit.field('image')}[{number}]"
                                                                 for number in range(len(images))]
        found = [analyser.largest_face(image, where) for image, where in zip(images, fields, strict=True)]
        face = torch.from_numpy(np.stack([item.normed_embedding.astype(np.float32) for item in found]))
    if adapter.family == FACE_ID:
        return ImagePrompt(unit, weights, adapter, face, torch.zeros_like(face))
    features = [encoder.encode(image) for image in images]
    if adapter.family == PLAIN:
        embeds = torch.cat([item.image_embeds for item in features])
        return ImagePrompt(unit, weights, adapter, embeds, torch.zeros_like(embeds))
    hidden = torch.cat([item.penultimate for item in features])
    negative = encoder.negative().penultimate.expand_as(hidden)
    if adapter.family == FACE_ID_PLUS:
        return ImagePrompt(unit, weights, adapter, face, torch.zeros_like(face), clip_cond=hidden,
                           clip_uncond=negative)
    return ImagePrompt(unit, weights, adapter, hidden, negative)


def instant_id_prompt(unit: ControlUnit, weights: dict, embedding: torch.Tensor) -> ImagePrompt:
    """InstantID's adapter as an image prompt: the raw face embedding as a one-token sequence."""
    face = embedding.reshape(1, 1, EMBEDDING_SIZE)
    cross = int(weights["ip_adapter"]["1.to_k_ip.weight"].shape[1])
    return ImagePrompt(unit, weights, AdapterFile(INSTANT_ID, cross, None), face, torch.zeros_like(face))
