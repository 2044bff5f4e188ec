"""InstantID's face tokens: what its Resampler (installed as diffusers' `IPAdapterPlusImageProjection` by
`engine.control.ip_adapter_install`) makes of the face embedding and of the zero embedding."""

from dataclasses import dataclass

import torch


EMBEDDING_SIZE = 512  # glintr100's ArcFace vector, what InstantID's Resampler reads


@dataclass(frozen=True)
class FaceTokens:
    """The Resampler's image tokens (1, 16, cross_attention_dim) for the face, and for an all-zero embedding:
    InstantID's negative (its pipeline, sd-webui-controlnet and Forge all project zeros for the uncond rows)."""

    cond: torch.Tensor
    uncond: torch.Tensor
