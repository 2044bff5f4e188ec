"""One denoising pass's control stack: at each UNet call, the summed ControlNet residuals (guidance windows,
weights, control-mode scales) and the IP-Adapters' image inputs and scales, for whatever rows the call batches.

The scales and windows are sd-webui-controlnet's (`hook.py`): residual i of a unit is multiplied by its weight,
and in the soft modes by 0.825^(12 − i) (SDXL's 9 down residuals + mid take the first 10 factors, SD1.5's 12 + mid
all 13); "ControlNet is more important" also gives the uncond rows no control at all.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.control.instantid import FaceTokens
from engine.control.ip_adapter_install import InstalledAdapter
from engine.sampling.transfer import to_device


SOFT_BASE = 0.825
SOFT_TOP = 12


def soft_scales(count: int) -> tuple[float, ...]:
    """sd-webui-controlnet's soft-injection factors for `count` residuals, down blocks first, mid last."""
    return tuple(SOFT_BASE ** float(SOFT_TOP - index) for index in range(count))


@dataclass(frozen=True)
class GuidanceClock:
    """How far sampling is at a model call, as sd-webui-controlnet measures it for guidance windows.

    It reads A1111's `state.sampling_step / state.sampling_steps`. `sampling_step` is set by the sampler's
    per-step callback, which k-diffusion calls after the first model evaluation of each step: the first call
    of step i still sees step i − 1 (step 0 at the start), later calls of the same step see i.
    `steps` is the pass's sampler step count (hires fix: the steps it runs, A1111's `t_enc + 1`).
    """

    steps: int
    calls_per_step: int = 1  # 2 for second-order samplers (Heun, DPM2, DPM++ SDE, DPM++ 2S)

    def sampling_step(self, call_index: int) -> int:
        step, call_in_step = divmod(call_index, self.calls_per_step)
        return step if call_in_step else max(step - 1, 0)

    def fraction(self, call_index: int) -> float:
        return self.sampling_step(call_index) / self.steps


@dataclass(frozen=True)
class RowLayout:
    """The rows of one UNet batch: the image each row belongs to and whether it is a cond (prompt) row."""

    images: tuple[int, ...]
    cond: tuple[bool, ...]

    @classmethod
    def cond_then_uncond(cls, cond_images: Sequence[int], images: int) -> "RowLayout":
        """`GuidedUNet`'s batched call: the cond rows (one per sub-prompt, each naming its image), then one
        uncond row per image."""
        return cls(tuple(cond_images) + tuple(range(images)), (True,) * len(cond_images) + (False,) * images)

    @classmethod
    def uniform(cls, row_images: Sequence[int], cond: bool) -> "RowLayout":
        """A call with only cond rows or only uncond rows (separate passes, or guidance scale 1)."""
        return cls(tuple(row_images), (cond,) * len(row_images))

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class ControlNetPass:
    """One ControlNet (or union ControlNet) unit in one pass: the model, its hint at this pass's size and how its
    output is scaled."""

    model: torch.nn.Module  # a diffusers ControlNetModel or ControlNetUnionModel
    hint: torch.Tensor  # (1, 3, height, width) in [0, 1] (inpaint: −1 where masked), model device and dtype
    weight: float
    start: float
    end: float
    soft: bool  # "My prompt is more important" / "ControlNet is more important" (and canny's hires pass)
    cond_only: bool  # "ControlNet is more important" or a pooled (shuffle) model: uncond rows get no control
    face_tokens: FaceTokens | None = None  # InstantID: the ControlNet attends to these, not to the prompt
    union_type: int | None = None  # a union ControlNet's control-type index (ProMax order)

    def active(self, fraction: float) -> bool:
        return self.start <= fraction <= self.end

    def scales(self, count: int) -> tuple[float, ...]:
        factors = soft_scales(count) if self.soft else (1.0,) * count
        return tuple(self.weight * factor for factor in factors)

    def residuals(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, added: dict | None,
                  rows: RowLayout) -> list[torch.Tensor] | None:
        """Down residuals then the mid residual, scaled, one row per row of `x`; None when no row gets any."""
        chosen = [row for row, cond in enumerate(rows.cond) if cond or not self.cond_only]
        if not chosen:
            return None
        # Built on the host and queued to the device: `torch.tensor(..., device="cuda")` would wait for the GPU.
        index = to_device(torch.tensor(chosen), x.device)
        dtype = self.hint.dtype  # the model's (`ModelMixin.dtype` walks every submodule at each call)
        if self.face_tokens is not None:
            context = torch.cat([self.face_tokens.cond if rows.cond[row] else self.face_tokens.uncond
                                 for row in chosen])
        else:
            context = context.index_select(0, index)
        added_rows = {key: value.index_select(0, index).to(dtype) for key, value in added.items()} if added else None
        hint = self.hint.expand(len(chosen), -1, -1, -1)
        extra = {"controlnet_cond": hint, "guess_mode": False}
        if self.union_type is not None:
            # diffusers' `ControlNetUnionModel`: one condition with its type, the type one-hot per row.
            types = torch.zeros((len(chosen), self.model.config.num_control_type), device=x.device, dtype=dtype)
            types[:, self.union_type] = 1
            extra = {"controlnet_cond": [hint], "control_type": types, "control_type_idx": [self.union_type]}
        down, mid = self.model(
            x.index_select(0, index).to(dtype),
            t,
            encoder_hidden_states=context.to(dtype),
            conditioning_scale=1.0,  # the per-residual scales below replace it
            added_cond_kwargs=added_rows,
            return_dict=False,
            **extra,  # guess_mode off: diffusers' scales by logspace(-1, 0), not A1111's factors
        )
        return _spread([*down, mid], self.scales(len(down) + 1), index, len(rows))


# sd-webui-controlnet `hook.py`: a T2I-Adapter's soft-injection factors, one per feature level.
ADAPTER_SOFT = (0.25, 0.62, 0.825, 1.0)


@dataclass(frozen=True)
class AdapterPass:
    """One T2I-Adapter unit in one pass: its features (computed once: they depend on the hint only) and how they
    are scaled; diffusers adds them inside the UNet's down blocks (`down_intrablock_additional_residuals`)."""

    features: tuple[torch.Tensor, ...]  # one (1, C, h, w) per level
    weight: float
    start: float
    end: float
    soft: bool
    cond_only: bool

    def active(self, fraction: float) -> bool:
        return self.start <= fraction <= self.end

    def residuals(self, rows: RowLayout, device: torch.device) -> list[torch.Tensor] | None:
        chosen = [row for row, cond in enumerate(rows.cond) if cond or not self.cond_only]
        if not chosen:
            return None
        factors = ADAPTER_SOFT if self.soft else (1.0,) * len(self.features)
        scales = [self.weight * factor for factor in factors[: len(self.features)]]
        index = to_device(torch.tensor(chosen), device)
        outputs = [feature.to(device).expand(len(chosen), -1, -1, -1) for feature in self.features]
        return _spread(outputs, scales, index, len(rows))


def _spread(outputs: list[torch.Tensor], scales, index: torch.Tensor, rows: int) -> list[torch.Tensor]:
    """Scale each output; rows not in `index` get zeros."""
    scaled = [output * scale for output, scale in zip(outputs, scales, strict=True)]
    if len(index) == rows:
        return scaled
    return [torch.zeros((rows, *output.shape[1:]), dtype=output.dtype, device=output.device)
            .index_copy(0, index, output) for output in scaled]


@dataclass(frozen=True)
class ImagePromptPass:
    """One IP-Adapter unit in one pass: what its projection reads for the cond rows and for the uncond rows,
    and its weight inside the guidance window (0 outside it, or when the unit sits this pass out)."""

    cond: torch.Tensor  # (images, *input)
    uncond: torch.Tensor
    weight: float
    start: float
    end: float
    runs: bool = True  # False when `hr_option` keeps the unit out of this pass
    clip_cond: torch.Tensor | None = None  # FaceID Plus: CLIP hidden states its projection reads beside
    clip_uncond: torch.Tensor | None = None
    shortcut: bool = False  # FaceID Plus v2

    def scale_at(self, fraction: float) -> float:
        return self.weight if self.runs and self.start <= fraction <= self.end else 0.0

    def image_embeds(self, rows: RowLayout, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """diffusers' per-adapter `image_embeds`: (rows, images, *input)."""
        return _per_row(self.cond, self.uncond, rows, device, dtype)


def _per_row(cond: torch.Tensor, uncond: torch.Tensor, rows: RowLayout, device, dtype) -> torch.Tensor:
    """(rows, images, …): each row's inputs, one per image of the unit."""
    cond, uncond = cond.to(device, dtype), uncond.to(device, dtype)
    return torch.stack([cond if is_cond else uncond for is_cond in rows.cond])


@dataclass(frozen=True)
class IpAdapterPass:
    """The request's IP-Adapters (InstantID's first, then the IP-Adapter units in order) installed in this
    pass's UNet."""

    adapter: InstalledAdapter
    prompts: tuple[ImagePromptPass, ...]

    def image_embeds(self, fraction: float, rows: RowLayout, device: torch.device,
                     dtype: torch.dtype) -> list[torch.Tensor]:
        """Set each adapter's scale for this call and return `added_cond_kwargs["image_embeds"]`. FaceID
        Plus's projection reads its CLIP input from an attribute (diffusers' `clip_embeds`, set per call to
        match the rows; the projection belongs to this request and leaves with it)."""
        self.adapter.set_scales([prompt.scale_at(fraction) for prompt in self.prompts])
        for index, prompt in enumerate(self.prompts):
            if prompt.clip_cond is not None:
                projection = self.adapter.projection(index)
                projection.clip_embeds = _per_row(prompt.clip_cond, prompt.clip_uncond, rows, device, dtype)
                projection.shortcut = prompt.shortcut
        return [prompt.image_embeds(rows, device, dtype) for prompt in self.prompts]


class ControlStack:
    """The ControlNets, T2I-Adapters, IP-Adapter and output blends of one pass. `unet_inputs` is called at each
    UNet call, `adjust_output` on its result."""

    def __init__(self, controlnets: Sequence[ControlNetPass], ip_adapter: IpAdapterPass | None,
                 clock: GuidanceClock, adapters: Sequence[AdapterPass] = (), blends: Sequence = (),
                 alphas_cumprod: torch.Tensor | None = None):
        self.controlnets = tuple(controlnets)
        self.ip_adapter = ip_adapter
        self.clock = clock
        self.adapters = tuple(adapters)
        self.blends = tuple(blends)  # engine.control.effects.UnetBlend
        self.alphas_cumprod = alphas_cumprod

    def unet_inputs(self, x: torch.Tensor, t: torch.Tensor, call_index: int, context: torch.Tensor,
                    added: dict | None, rows: RowLayout) -> dict:
        """Keyword arguments for `UNet2DConditionModel.forward` beyond sample, timestep and context:
        `added_cond_kwargs` (with the IP-Adapter's `image_embeds` when one is installed) and, when a ControlNet
        or T2I-Adapter is active at this call, `down_block_additional_residuals` /
        `mid_block_additional_residual` / `down_intrablock_additional_residuals`.

        Args:
            x, t, context, added: exactly what the UNet is about to get (rows as in `rows`).
            call_index: the pass's model-call counter (the denoising loop's `call_index`).
            rows: which image and which side of CFG each row of `x` is.
        """
        if len(rows) != x.shape[0]:
            raise ValueError(f"row layout has {len(rows)} rows, the batch {x.shape[0]}")
        fraction = self.clock.fraction(call_index)
        inputs: dict = {"added_cond_kwargs": added}
        if self.ip_adapter is not None:
            embeds = self.ip_adapter.image_embeds(fraction, rows, x.device, x.dtype)
            inputs["added_cond_kwargs"] = {**(added or {}), "image_embeds": embeds}
        total = _summed(controlnet.residuals(x, t, context, added, rows)
                        for controlnet in self.controlnets if controlnet.active(fraction))
        if total is not None:
            inputs["down_block_additional_residuals"] = tuple(r.to(x.dtype) for r in total[:-1])
            inputs["mid_block_additional_residual"] = total[-1].to(x.dtype)
        features = _summed(adapter.residuals(rows, x.device) for adapter in self.adapters if adapter.active(fraction))
        if features is not None:
            inputs["down_intrablock_additional_residuals"] = [f.to(x.dtype) for f in features]
        return inputs

    def adjust_output(self, output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, rows: RowLayout) -> torch.Tensor:
        """The UNet's ε after the units' blends (inpaint_only, tile_colorfix), in order; unchanged without any.
        sd-webui-controlnet applies them at every call, inside or outside the guidance window."""
        cond = torch.tensor([1.0 if c else 0.0 for c in rows.cond])
        for blend in self.blends:
            output = blend.apply(output, x, t.expand(x.shape[0]) if t.ndim else t.repeat(x.shape[0]),
                                 self.alphas_cumprod, cond)
        return output


def _summed(results) -> list[torch.Tensor] | None:
    total = None
    for residuals in results:
        if residuals is not None:
            total = residuals if total is None else [a + b for a, b in zip(total, residuals, strict=True)]
    return total
