"""The UNet behind classifier-free guidance, as A1111's CFGDenoiser runs it (composable `AND` prompts included)."""

from collections.abc import Callable
from dataclasses import dataclass

import torch


# For each image of the batch: the cond rows that guide it, each with its `AND` weight (A1111 `conds_list`).
Composition = tuple[tuple[tuple[int, float], ...], ...]


@dataclass(frozen=True)
class StepConditioning:
    """What the UNet is conditioned on at one model call, for the whole batch.

    `cond` holds one row per image, or with `composition` one row per `AND` sub-prompt of each image;
    `uncond` one row per image. `added` holds SDXL's extra inputs (`text_embeds` = pooled, `time_ids`),
    keyed as diffusers' UNet wants, with the same rows as the tensor they go with.
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    cond_added: dict[str, torch.Tensor] | None = None
    uncond_added: dict[str, torch.Tensor] | None = None
    composition: Composition | None = None  # None: cond row i guides image i with weight 1

    def rows(self) -> Composition:
        """The composition, spelled out when it is the plain one row per image."""
        if self.composition is not None:
            return self.composition
        return tuple(((image, 1.0),) for image in range(self.uncond.shape[0]))


# call index (A1111 counts every model call, second-order samplers included) → conditioning
ConditioningAt = Callable[[int], StepConditioning]


def constant(conditioning: StepConditioning) -> ConditioningAt:
    return lambda call_index: conditioning


class GuidedUNet:
    """eps(x, t) = uncond + Σᵢ wᵢ · scale · (condᵢ − uncond), the UNet run in its own dtype, the result in fp32.

    Without `AND` this is the usual uncond + scale · (cond − uncond). `control` (an
    `engine.control.residuals.ControlStack`) adds ControlNet residuals and IP-Adapter image tokens per call.
    `image_conditioning` (batch, C, h, w), one row per image, is concatenated to every row's input on the
    channel axis, as A1111's `c_concat` for inpainting checkpoints (mask + masked image's latent).
    `rows_per_call` caps the rows of one UNet call (the lower-memory retry after running out of memory runs
    one row at a time): the same result up to float rounding, less activation memory.
    `step_cache` (an `engine.sampling.step_cache.StepCache`, DeepCache) runs most calls on the shallow layers
    only, on deep features cached at the last full call.
    """

    def __init__(
        self,
        unet,
        guidance_scale: float,
        conditioning_at: ConditioningAt,
        control=None,
        image_conditioning: torch.Tensor | None = None,
        rows_per_call: int | None = None,
        step_cache=None,
    ):
        self.unet = unet
        self.guidance_scale = guidance_scale
        self.conditioning_at = conditioning_at
        self.control = control
        self.image_conditioning = image_conditioning
        self.rows_per_call = rows_per_call
        self.step_cache = step_cache
        # Read once: diffusers' `ModelMixin.dtype` walks every submodule, milliseconds at each UNet call.
        self.dtype = unet.dtype
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, call_index: int) -> torch.Tensor:
        conditioning = self.conditioning_at(call_index)
        composition = conditioning.rows()
        plain = _is_plain(composition)
        images = range(len(x))
        if self.guidance_scale == 1.0 and plain:
            return self._unet(
                x, t, conditioning.cond, conditioning.cond_added, call_index, Rows(images, ())
            )
        # Each cond row sees its image's latent (A1111 repeats x once per sub-prompt, then x for the uncond).
        cond_images = (
            list(images) if plain else [image for image, rows in enumerate(composition) for _ in rows]
        )
        x_rows = x if plain else x[cond_images]
        if conditioning.cond.shape[1] == conditioning.uncond.shape[1]:
            # One batch of [cond rows, uncond rows], as A1111 orders it.
            both = self._unet(
                torch.cat([x_rows, x]),
                t,
                torch.cat([conditioning.cond, conditioning.uncond]),
                _cat_added(conditioning.cond_added, conditioning.uncond_added),
                call_index,
                Rows(cond_images, images),
            )
            cond_eps, uncond_eps = both[: len(x_rows)], both[len(x_rows) :]
        else:
            # Prompts of different token counts cannot share a batch: A1111 runs separate passes.
            rows = Rows(cond_images, ())
            cond_eps = self._unet(x_rows, t, conditioning.cond, conditioning.cond_added, call_index, rows)
            rows = Rows((), images)
            uncond_eps = self._unet(x, t, conditioning.uncond, conditioning.uncond_added, call_index, rows)
        if plain:
            return uncond_eps + self.guidance_scale * (cond_eps - uncond_eps)
        return _compose(cond_eps, uncond_eps, composition, self.guidance_scale)

    def _unet(self, x, t, context, added, call_index: int, rows: "Rows") -> torch.Tensor:
        self.calls += 1
        size = self.rows_per_call
        if size is None or len(x) <= size:
            return self._unet_rows(x, t, context, added, call_index, rows)
        chunks = [slice(start, start + size) for start in range(0, len(x), size)]
        return torch.cat([
            self._unet_rows(
                x[chunk],
                t,
                context[chunk],
                {key: value[chunk] for key, value in added.items()} if added else added,
                call_index,
                rows.sliced(chunk),
            )
            for chunk in chunks
        ])

    def _unet_rows(self, x, t, context, added, call_index: int, rows: "Rows") -> torch.Tensor:
        dtype = self.dtype
        x, context = x.to(dtype), context.to(dtype)
        added = {k: v.to(dtype) for k, v in added.items()} if added else None
        latent = x
        if self.control is None:
            inputs = {"added_cond_kwargs": added}
        else:
            # ControlNet reads the 4-channel latent, whatever the UNet's input width.
            inputs = self.control.unet_inputs(x, t, call_index, context, added, rows.layout())
        if self.image_conditioning is not None:
            # Each row takes its image's conditioning, cond and uncond rows alike (A1111 `image_cond_in`).
            images = [*rows.cond_images, *rows.uncond_images]
            x = torch.cat([x, self.image_conditioning[images].to(device=x.device, dtype=dtype)], dim=1)
        if self.step_cache is not None:
            # Each batch layout keeps its own deep features: cond and uncond calls never share them.
            key = (tuple(rows.cond_images), tuple(rows.uncond_images))
            output = self.step_cache(key, call_index, x, t, context, inputs).float()
        else:
            output = self.unet(x, t, encoder_hidden_states=context, return_dict=False, **inputs)[0].float()
        if self.control is not None:
            # sd-webui-controlnet's blends on the UNet's output (inpaint_only, tile_colorfix).
            output = self.control.adjust_output(output, latent, torch.as_tensor(t), rows.layout())
        return output


@dataclass(frozen=True)
class Rows:
    """Which image each row of a UNet batch belongs to: the cond rows first, then the uncond rows."""

    cond_images: tuple[int, ...] | list[int] | range
    uncond_images: tuple[int, ...] | range

    def sliced(self, rows: slice) -> "Rows":
        """The rows `rows` of the batch (cond rows first, then uncond rows), as their own layout."""
        count = len(self.cond_images)
        uncond = slice(max(rows.start - count, 0), max(rows.stop - count, 0))
        return Rows(tuple(self.cond_images[rows]), tuple(self.uncond_images[uncond]))

    def layout(self):
        from engine.control.residuals import RowLayout

        images = (*self.cond_images, *self.uncond_images)
        return RowLayout(images, (True,) * len(self.cond_images) + (False,) * len(self.uncond_images))


def _is_plain(composition: Composition) -> bool:
    return all(rows == ((image, 1.0),) for image, rows in enumerate(composition))


def _compose(cond_eps: torch.Tensor, uncond_eps: torch.Tensor, composition: Composition, scale: float):
    """A1111 `CFGDenoiser.combine_denoised`, term by term in its order (here on epsilon, which the
    denoised prediction depends on linearly)."""
    guided = uncond_eps.clone()
    for image, rows in enumerate(composition):
        for row, weight in rows:
            guided[image] += (cond_eps[row] - uncond_eps[image]) * (weight * scale)
    return guided


def _cat_added(first, second):
    if first is None:
        return None
    return {key: torch.cat([first[key], second[key]]) for key in first}
