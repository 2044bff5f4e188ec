"""InstantID's IP-Adapter in the UNet for one request (diffusers' own loader), and the face tokens it makes.

The adapter is installed with `UNet2DConditionLoadersMixin._load_ip_adapter_weights` (what
`IPAdapterMixin.load_ip_adapter` calls): it converts InstantID's Resampler into diffusers'
`IPAdapterPlusImageProjection` and puts `IPAdapterAttnProcessor2_0` on every cross-attention. On leaving, the
UNet gets back its own projection (none), its `encoder_hid_dim_type` and the very processor objects it had.
"""

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch


logger = logging.getLogger(__name__)

EMBEDDING_SIZE = 512  # glintr100's ArcFace vector, what InstantID's Resampler reads


@dataclass(frozen=True)
class FaceTokens:
    """The Resampler's image tokens (1, 16, cross_attention_dim) for the face, and for an all-zero embedding:
    InstantID's negative (its pipeline, sd-webui-controlnet and Forge all project zeros for the uncond rows)."""

    cond: torch.Tensor
    uncond: torch.Tensor


class InstalledAdapter:
    """An IP-Adapter living in a UNet for the duration of `ip_adapter_installed`."""

    def __init__(self, unet):
        from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

        self.unet = unet
        self.processors = [processor for processor in unet.attn_processors.values()
                           if isinstance(processor, IPAdapterAttnProcessor | IPAdapterAttnProcessor2_0)]

    def set_scale(self, scale: float) -> None:
        """The weight of the image attention (sd-webui-controlnet: the unit's weight; 0 switches it off)."""
        for processor in self.processors:
            processor.scale = [float(scale)] * len(processor.scale)

    @torch.no_grad()
    def face_tokens(self, embedding: torch.Tensor) -> FaceTokens:
        """Project a raw face embedding (512,) and the zero embedding through the adapter's Resampler."""
        projection = self.unet.encoder_hid_proj.image_projection_layers[0]
        parameter = next(projection.parameters())
        face = embedding.reshape(1, 1, EMBEDDING_SIZE).to(parameter.device, parameter.dtype)
        tokens = projection(torch.cat([torch.zeros_like(face), face]))
        return FaceTokens(cond=tokens[1:], uncond=tokens[:1])


@contextmanager
def ip_adapter_installed(unet, state_dict: Mapping[str, Mapping[str, torch.Tensor]],
                         scale: float) -> Iterator[InstalledAdapter]:
    """Install an IP-Adapter ({"image_proj", "ip_adapter"} as InstantID's `ip-adapter.bin`) into a shared UNet,
    yield it, and restore the UNet exactly as it was, whatever happens inside."""
    processors = unet.attn_processors
    projection = unet.encoder_hid_proj
    hid_dim_type = unet.config.encoder_hid_dim_type
    try:
        unet._load_ip_adapter_weights([dict(state_dict)])
        adapter = InstalledAdapter(unet)
        adapter.set_scale(scale)
        logger.info("IP-Adapter installed on %d cross-attention layers, scale %.3g", len(adapter.processors), scale)
        yield adapter
    finally:
        # The projection first: while installed, `attn_processors` also lists the Resampler's own processors.
        unet.encoder_hid_proj = projection
        unet.config.encoder_hid_dim_type = hid_dim_type  # what diffusers' `unload_ip_adapter` resets too
        unet.set_attn_processor(processors)
