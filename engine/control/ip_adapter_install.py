"""IP-Adapters in a shared UNet for one request, with diffusers' own loader, and taken out again exactly.

`UNet2DConditionLoadersMixin._load_ip_adapter_weights` (what `IPAdapterMixin.load_ip_adapter` calls) converts
each file's projection to diffusers' class (`ImageProjection`, `IPAdapterPlusImageProjection`,
`IPAdapterFaceIDImageProjection`, `IPAdapterFaceIDPlusImageProjection`…) inside a
`MultiIPAdapterImageProjection`, and puts `IPAdapterAttnProcessor2_0` on every cross-attention with one
`to_k_ip` / `to_v_ip` pair and one scale per adapter. That projection is wrapped so that an adapter given
several images gets the average of their projected tokens, as sd-webui-controlnet combines them
(`scripts/ipadapter/ipadapter_model.py` `ImageEmbed.average_of`, GPL-3.0); diffusers would concatenate them.
On leaving, the UNet gets back its own projection (none), its `encoder_hid_dim_type` and the very processor
objects it had.
"""

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

from engine.control.instantid import EMBEDDING_SIZE, FaceTokens


logger = logging.getLogger(__name__)

Weights = Mapping[str, Mapping[str, torch.Tensor]]  # {"image_proj": ..., "ip_adapter": ...}


class InstalledAdapter:
    """The IP-Adapters living in a UNet for the duration of `ip_adapter_installed`, in the order given."""

    def __init__(self, unet):
        from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

        self.unet = unet
        self.processors = [processor for processor in unet.attn_processors.values()
                           if isinstance(processor, IPAdapterAttnProcessor | IPAdapterAttnProcessor2_0)]

    def projection(self, index: int) -> torch.nn.Module:
        """Adapter `index`'s image projection (diffusers' class)."""
        return self.unet.encoder_hid_proj.projections.image_projection_layers[index]

    def set_scale(self, scale: float) -> None:
        """One weight for every adapter (0 switches them off)."""
        for processor in self.processors:
            processor.scale = [float(scale)] * len(processor.scale)

    def set_scales(self, scales: Sequence[float]) -> None:
        """The weight of each adapter's image attention (sd-webui-controlnet: its unit's weight inside the
        guidance window, 0 outside it; diffusers skips an adapter whose scale is 0)."""
        for processor in self.processors:
            processor.scale = [float(scale) for scale in scales]

    @torch.no_grad()
    def face_tokens(self, embedding: torch.Tensor, index: int = 0) -> FaceTokens:
        """InstantID: project a raw face embedding (512,) and the zero embedding through adapter `index`."""
        projection = self.projection(index)
        parameter = next(projection.parameters())
        face = embedding.reshape(1, 1, EMBEDDING_SIZE).to(parameter.device, parameter.dtype)
        tokens = projection(torch.cat([torch.zeros_like(face), face]))
        return FaceTokens(cond=tokens[1:], uncond=tokens[:1])


class AveragedImages(torch.nn.Module):
    """diffusers' `MultiIPAdapterImageProjection`, with each adapter's images averaged after projection:
    (rows, images, tokens, width) → (rows, 1, tokens, width). One image passes through unchanged."""

    def __init__(self, projections: torch.nn.Module):
        super().__init__()
        self.projections = projections

    def forward(self, image_embeds: list[torch.Tensor]) -> list[torch.Tensor]:
        return [tokens.mean(dim=1, keepdim=True) for tokens in self.projections(image_embeds)]


@contextmanager
def ip_adapter_installed(unet, weights: Weights | Sequence[Weights], scale: float) -> Iterator[InstalledAdapter]:
    """Install one IP-Adapter or several (each {"image_proj", "ip_adapter"} as the single-file format holds
    them) into a shared UNet, yield them, and restore the UNet exactly as it was, whatever happens inside."""
    state_dicts = [dict(weights)] if isinstance(weights, Mapping) else [dict(w) for w in weights]
    processors = unet.attn_processors
    projection = unet.encoder_hid_proj
    hid_dim_type = unet.config.encoder_hid_dim_type
    try:
        unet._load_ip_adapter_weights(state_dicts)
        unet.encoder_hid_proj = AveragedImages(unet.encoder_hid_proj)
        adapter = InstalledAdapter(unet)
        adapter.set_scale(scale)
        logger.info("%d IP-Adapter(s) installed on %d cross-attention layers", len(state_dicts),
                    len(adapter.processors))
        yield adapter
    finally:
        # The projection first: while installed, `attn_processors` also lists the Resampler's own processors.
        unet.encoder_hid_proj = projection
        unet.config.encoder_hid_dim_type = hid_dim_type  # what diffusers' `unload_ip_adapter` resets too
        unet.set_attn_processor(processors)
