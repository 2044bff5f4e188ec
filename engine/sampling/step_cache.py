"""DeepCache step caching for diffusers' `UNet2DConditionModel` (SD1.5, SDXL and its refiner).

Ma, Fang, Wang, "DeepCache: Accelerating Diffusion Models for Free" (arXiv 2312.00858), uniform schedule: the
UNet's deep features change slowly from one denoising step to the next, so a full forward at every N-th call
caches the feature that the deep path hands to the up path at one skip branch, and the calls in between run only
the shallow layers around that branch (conv_in, the down layers before it, the up layers after it, conv_out)
on the cached feature. Written after reading the reference implementation (horseee/DeepCache,
`DeepCache/extension/deepcache.py`, Apache-2.0), which swaps the `forward` of the UNet's blocks; this module
instead runs the shallow layers itself and leaves the shared UNet untouched (a forward pre-hook lives only for
the duration of one full call). Branch numbering is the reference's `cache_branch_id`: branch b is the skip
connection carrying the b-th down-path feature (0 = conv_in's output, the shallowest and fastest).
"""

from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import UnsupportedError
from engine.speedups import StepCaching


@dataclass(frozen=True)
class _DownLayer:
    """One layer of the down path that emits a skip feature: a resnet (+ attention), or the downsamplers.

    `adapter_block`: the down block whose T2I-Adapter feature diffusers adds to this layer's output (a
    cross-attention block's last layer; a plain block's last output, downsampled or not), else None.
    """

    resnet: nn.Module | None
    attention: nn.Module | None = None
    downsamplers: nn.ModuleList | None = None
    adapter_block: int | None = None

    def __call__(self, hidden: torch.Tensor, emb: torch.Tensor, context) -> torch.Tensor:
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden = downsampler(hidden)
            return hidden
        hidden = self.resnet(hidden, emb)
        if self.attention is not None:
            hidden = self.attention(hidden, encoder_hidden_states=context, return_dict=False)[0]
        return hidden


@dataclass(frozen=True)
class _UpLayer:
    """One layer of the up path: concatenates skip feature `skip`, then resnet (+ attention), then the block's
    upsamplers when it is the block's last layer."""

    skip: int
    resnet: nn.Module
    attention: nn.Module | None
    upsamplers: nn.ModuleList | None


def _down_layers(unet) -> tuple[list[_DownLayer], list[int]]:
    """The down path layer by layer, and the channels of every skip feature (conv_in's first)."""
    layers: list[_DownLayer] = []
    channels = [unet.conv_in.out_channels]
    for index, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        cross_attention = getattr(block, "has_cross_attention", False)
        for number, (resnet, attention) in enumerate(zip(block.resnets, attentions, strict=True)):
            last = number == len(block.resnets) - 1
            adapter = last and (cross_attention or block.downsamplers is None)
            layers.append(_DownLayer(resnet, attention, adapter_block=index if adapter else None))
            channels.append(resnet.out_channels)
        if block.downsamplers is not None:
            adapter = None if cross_attention else index
            layers.append(_DownLayer(None, downsamplers=block.downsamplers, adapter_block=adapter))
            channels.append(block.downsamplers[-1].out_channels)
    return layers, channels


class ShallowPath:
    """The layers of `unet` that run on a cached call at skip branch `branch`, and where the deep feature is."""

    def __init__(self, unet, branch: int):
        self.unet = unet
        down, channels = _down_layers(unet)
        if not 0 <= branch < len(channels):
            # A worker setting that does not fit this checkpoint: the client gets the line (not an internal
            # error), and the checkpoint is not kept loaded.
            raise UnsupportedError(
                "DEEPCACHE_BRANCH", f"the worker's setting must be from 0 to {len(channels) - 1} for this "
                                    f"checkpoint's UNet (its skip branches), got {branch}"
            )
        up: list[_UpLayer] = []
        skip = len(channels) - 1  # the up path takes the skip features in reverse order
        for block in unet.up_blocks:
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for index, (resnet, attention) in enumerate(zip(block.resnets, attentions, strict=True)):
                last = index == len(block.resnets) - 1
                up.append(_UpLayer(skip, resnet, attention, block.upsamplers if last else None))
                skip -= 1
        self.down = down[:branch]
        self.up = [layer for layer in up if layer.skip <= branch]
        self.skip_channels = channels[branch]

    def full(self, sample, timestep, context, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """diffusers' own forward (`inputs`: its keyword arguments beyond sample, timestep and context), plus
        the deep feature entering the branch's up layer (for later calls)."""
        captured = []

        def keep_deep_feature(module, args):
            joined = args[0]  # torch.cat([deep feature, skip feature], dim=1)
            captured.append(joined[:, : joined.shape[1] - self.skip_channels])

        handle = self.up[0].resnet.register_forward_pre_hook(keep_deep_feature)
        try:
            output = self.unet(sample, timestep, encoder_hidden_states=context, return_dict=False, **inputs)[0]
        finally:
            handle.remove()
        return output, captured[0]

    def shallow(self, sample, timestep, context, inputs: dict, deep: torch.Tensor) -> torch.Tensor:
        """The UNet's output with the deep path replaced by `deep`: the steps of diffusers'
        `UNet2DConditionModel.forward` an SD1.5/SDXL UNet takes, restricted to the shallow layers.

        ControlNet residuals (`down_block_additional_residuals`) are added to the skip features this call
        computes and T2I-Adapter features (`down_intrablock_additional_residuals`) inside the down layers it
        runs, as diffusers adds them; the deeper ones (and the mid residual) reach the output only through
        `deep`, as they were at the last full call. IP-Adapter image tokens go through `added_cond_kwargs`.
        """
        unet = self.unet
        added = inputs.get("added_cond_kwargs")
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=context, added_cond_kwargs=added)
        emb = emb + aug if aug is not None else emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        context = unet.process_encoder_hidden_states(encoder_hidden_states=context, added_cond_kwargs=added)
        # diffusers passes the upsamplers an explicit size only when the latent is not a multiple of 2^n.
        factor = 2**unet.num_upsamplers
        explicit_size = any(size % factor for size in sample.shape[-2:])
        adapter = inputs.get("down_intrablock_additional_residuals") or ()
        hidden = unet.conv_in(sample)
        skips = [hidden]
        for layer in self.down:
            hidden = layer(hidden, emb, context)
            if layer.adapter_block is not None and layer.adapter_block < len(adapter):
                hidden = hidden + adapter[layer.adapter_block]
            skips.append(hidden)
        controlnet = inputs.get("down_block_additional_residuals")
        if controlnet is not None:
            skips = [skip + residual for skip, residual in zip(skips, controlnet[: len(skips)], strict=True)]
        hidden = deep
        for layer in self.up:
            hidden = layer.resnet(torch.cat([hidden, skips[layer.skip]], dim=1), emb)
            if layer.attention is not None:
                hidden = layer.attention(hidden, encoder_hidden_states=context, return_dict=False)[0]
            if layer.upsamplers is not None:
                size = skips[layer.skip - 1].shape[2:] if explicit_size else None
                for upsampler in layer.upsamplers:
                    hidden = upsampler(hidden, size)
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)


@dataclass
class _Cached:
    call_index: int  # the model call whose full forward produced `deep`
    deep: torch.Tensor


class StepCache:
    """One pass's DeepCache state: built with the pass's guided UNet, so nothing outlives the pass.

    Each kind of UNet call of a pass (the batched cond + uncond rows, or the cond and uncond calls of prompts of
    different lengths, or each chunk of the lower-memory retry) has its own cached feature, keyed by its rows,
    so no call reuses another's. The schedule is decided on the host from the call index: no device sync.
    """

    def __init__(self, unet, caching: StepCaching):
        self.path = ShallowPath(unet, caching.branch)
        self.interval = caching.interval
        self.entries: dict[object, _Cached] = {}
        self.full_calls = 0
        self.shallow_calls = 0

    def __call__(self, key, call_index: int, sample, timestep, context, inputs: dict) -> torch.Tensor:
        """The UNet's output for one call; `inputs` are diffusers' forward keyword arguments beyond sample,
        timestep and context (`added_cond_kwargs`, ControlNet and T2I-Adapter residuals)."""
        entry = self.entries.get(key)
        if entry is None or call_index - entry.call_index >= self.interval:
            output, deep = self.path.full(sample, timestep, context, inputs)
            self.entries[key] = _Cached(call_index, deep)
            self.full_calls += 1
            return output
        self.shallow_calls += 1
        return self.path.shallow(sample, timestep, context, inputs, entry.deep)
