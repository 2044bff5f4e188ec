"""A request's ControlNet, InstantID and IP-Adapter units made ready once: models resolved and loaded, maps
drawn, faces and images embedded. Then the IP-Adapters are installed around the generation and each denoising
pass gets its stack."""

import functools
import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from engine.control import hints
from engine.control.effects import noised_start
from engine.control.image_prompts import ImagePrompt, instant_id_prompt, prepare_image_prompt
from engine.control.instantid import FaceTokens
from engine.control.ip_adapter_install import InstalledAdapter, ip_adapter_installed
from engine.control.ip_adapters import check_module_fits, check_unet_fits, describe_adapter
from engine.control.maps.registry import MapTools, detect_map
from engine.control.models import ADAPTER, UNION, ControlModels, model_kind
from engine.control.modules import UNION_TYPES
from engine.control.preprocess import FaceFinder, fit_map, pixel_perfect_resolution
from engine.control.residuals import (
    AdapterPass,
    ControlNetPass,
    ControlStack,
    GuidanceClock,
    ImagePromptPass,
    IpAdapterPass,
)
from engine.control.units import BALANCED, CONTROL_MORE_IMPORTANT, RESIZE_AND_FILL, ControlUnit
from engine.errors import RequestError
from engine.sampling.model_schedule import alphas_cumprod_from_config


logger = logging.getLogger(__name__)

Size = tuple[int, int]  # (width, height) in pixels


@dataclass(frozen=True)
class MapUnit:
    unit: ControlUnit
    model: torch.nn.Module  # ControlNetModel, ControlNetUnionModel or T2IAdapter
    detected: np.ndarray  # the preprocessor's map (HWC uint8 RGB; RGBA for inpaint), before fitting


@dataclass(frozen=True)
class FaceUnit:
    unit: ControlUnit
    weights: dict  # the IP-Adapter state dict
    embedding: torch.Tensor  # (512,), raw


class ControlRequest:
    """Prepared units of one request. Use `applied(unet)` around the passes and `stack_for_pass` per pass."""

    def __init__(self, map_units: Sequence[MapUnit], face_unit: FaceUnit | None,
                 detected_maps: list[Image.Image], notes: list[str], seed: int = 0,
                 image_prompts: Sequence[ImagePrompt] = ()):
        self.map_units = tuple(map_units)
        self.face_unit = face_unit
        self.image_prompts = tuple(image_prompts)  # the IP-Adapter units besides InstantID's
        self.detected_maps = detected_maps  # appended to the response's images after the results
        self.notes = notes  # e.g. a model found by name whose hash differs from the requested one
        self.seed = seed  # draws the VAE posterior samples of control images (inpaint_only, colorfix, lama)
        self.model_calls = 0  # ControlNet / adapter forwards, for the benchmarks
        self._adapters: dict[int, InstalledAdapter] = {}  # by id() of the UNet, while `applied`
        self._tokens: FaceTokens | None = None

    @property
    def adapters(self) -> tuple[ImagePrompt, ...]:
        """Every IP-Adapter of the request in installation order: InstantID's first, then the units'."""
        if self.face_unit is None:
            return self.image_prompts
        face = self.face_unit
        return (instant_id_prompt(face.unit, face.weights, face.embedding), *self.image_prompts)

    @contextmanager
    def applied(self, *unets) -> Iterator[None]:
        """Install the IP-Adapters (InstantID's and the IP-Adapter units') into each distinct UNet the passes
        use (hires fix may run another checkpoint); removed on exit, whatever happens, the UNets' weights
        untouched."""
        prompts = self.adapters
        if not prompts:
            yield
            return
        with ExitStack() as installed:
            for unet in {id(unet): unet for unet in unets}.values():
                for prompt in prompts:
                    check_unet_fits(prompt.adapter, prompt.weights, unet, prompt.unit.field("model"),
                                    prompt.unit.model)
                adapter = installed.enter_context(
                    ip_adapter_installed(unet, [prompt.weights for prompt in prompts], prompts[0].unit.weight))
                self._adapters[id(unet)] = adapter
            try:
                yield
            finally:
                self._adapters.clear()
                self._tokens = None

    def stack_for_pass(self, unet, width: int, height: int, steps: int, second_order: bool = False,
                       hires: bool = False, pipe=None) -> ControlStack:
        """The control stack for one pass at width × height running `steps` sampler steps.

        Args:
            unet: the pass's UNet (to check the ControlNets fit it).
            width, height: the pass's image size in pixels (hires fix: the hires size).
            steps: sampler steps this pass runs; second_order: two model calls per step.
            hires: the second pass of hires fix (unit `hr_option`, canny's soft hires scales).
            pipe: the pass's pipeline: its VAE encodes control images for inpaint_only / tile_colorfix, its
                scheduler config gives ᾱ(t) for their blends.
        """
        adapter = self._adapters.get(id(unet))
        if (self.face_unit is not None or self.image_prompts) and adapter is None:
            raise RuntimeError("stack_for_pass needs the IP-Adapter in this UNet: call it inside applied(unet)")
        active = [item for item in self.map_units if item.unit.runs_in(hires)]
        controlnets, adapters, blends = [], [], []
        for item in active:
            fitted = fit_map(item.detected, item.unit.resize_mode, width, height)
            if model_kind(item.model) == ADAPTER:
                adapters.append(self._adapter_pass(item, unet, fitted, hires))
            else:
                controlnets.append(self._controlnet_pass(item, unet, fitted, hires))
            if item.unit.module.post in ("inpaint_only", "colorfix"):
                blends.append(self._blend(item, fitted, pipe, hires))
        ip_adapter = None
        if adapter is not None:
            ip_adapter = IpAdapterPass(adapter, tuple(_prompt_pass(prompt, hires) for prompt in self.adapters))
        alphas = alphas_cumprod_from_config(dict(pipe.scheduler.config)) if blends else None
        clock = GuidanceClock(steps, 2 if second_order else 1)
        return ControlStack(controlnets, ip_adapter, clock, adapters, blends, alphas)

    def initial_noise(self, noise: torch.Tensor, pipe) -> torch.Tensor:
        """inpaint_only+lama: the first pass's noise starts from the LaMa-filled image (`HackedImageRNG`)."""
        for item in self.map_units:
            if item.unit.module.name == "inpaint_only+lama" and item.unit.runs_in(False):
                height, width = noise.shape[-2] * pipe.vae_scale_factor, noise.shape[-1] * pipe.vae_scale_factor
                fitted = fit_map(item.detected, item.unit.resize_mode, width, height)
                origin = hints.encode_hint(pipe, fitted, self.seed)
                return noised_start(noise, origin, alphas_cumprod_from_config(dict(pipe.scheduler.config)))
        return noise

    def postprocess(self, images: list[Image.Image], width: int, height: int) -> list[Image.Image]:
        """Decoded images after the units' pixel steps (inpaint_only, recolor), before any inpaint paste-back
        (sd-webui-controlnet's `postprocess_batch`), with the maps fitted to the final size."""
        posts = [hints.pixel_post(item.unit.module, fit_map(item.detected, item.unit.resize_mode, width, height))
                 for item in self.map_units]
        posts = [post for post in posts if post is not None]
        if not posts:
            return images
        done = []
        for image in images:
            values = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            for post in posts:
                values = post.apply(values)
            done.append(Image.fromarray((values * 255.0).astype(np.uint8)))
        return done

    def _controlnet_pass(self, item: MapUnit, unet, fitted: np.ndarray, hires: bool) -> ControlNetPass:
        unit, model = item.unit, item.model
        face_tokens = self._face_tokens() if unit.is_instant_id_controlnet else None
        _check_fits(unit, model, unet, face_tokens)
        union = None
        if model_kind(model) == UNION:
            if unit.union_type is None:
                raise RequestError(unit.field("union_control_type"), f"a union ControlNet needs a control type; "
                                   f"module {unit.module.name!r} has none: send one of {', '.join(UNION_TYPES)}")
            union = UNION_TYPES.index(unit.union_type)
        hint = hints.model_hint(fitted).to(model.device, model.dtype)
        pooled = bool(getattr(model.config, "global_pool_conditions", False))
        return ControlNetPass(
            model=_Counted(model, self), hint=hint, weight=unit.weight,
            start=unit.guidance_start, end=unit.guidance_end, soft=_soft(unit, hires),
            cond_only=unit.control_mode == CONTROL_MORE_IMPORTANT or pooled, face_tokens=face_tokens,
            union_type=union)

    def _adapter_pass(self, item: MapUnit, unet, fitted: np.ndarray, hires: bool) -> AdapterPass:
        unit, model = item.unit, item.model
        levels = tuple(unet.config.block_out_channels)
        if tuple(model.config.channels[: len(levels)]) != levels:
            raise RequestError(unit.field("model"), f"{unit.model!r} does not fit this checkpoint (a T2I-Adapter "
                                                    "for another model family, e.g. SD1.5 vs SDXL)")
        hint = hints.model_hint(fitted)
        if model.config.in_channels == 1:
            hint = hint[:, :1]  # sketch / canny adapters read one grey channel
        with torch.no_grad():
            self.model_calls += 1
            features = model(hint.to(model.device, model.dtype))
        return AdapterPass(tuple(features), unit.weight, unit.guidance_start, unit.guidance_end,
                           soft=_soft(unit, hires), cond_only=unit.control_mode == CONTROL_MORE_IMPORTANT)

    def _blend(self, item: MapUnit, fitted: np.ndarray, pipe, hires: bool):
        if pipe is None:
            raise RuntimeError(f"module {item.unit.module.name!r} needs the pass's pipeline (its VAE)")
        unit = item.unit
        origin = hints.encode_hint(pipe, fitted, self.seed)
        return hints.unet_blend(unit.module, fitted, origin, unit.weight, unit.threshold_a, unit.threshold_b, hires)

    def _face_tokens(self) -> FaceTokens:
        """The face's image tokens (and the zero embedding's), projected once by the adapter's Resampler (the
        same weights in every UNet it is installed in)."""
        if self._tokens is None:
            adapter = next(iter(self._adapters.values()))
            self._tokens = adapter.face_tokens(self.face_unit.embedding, index=0)  # InstantID's is installed first
        return self._tokens


def prepare_control(units: Sequence[ControlUnit], catalog, models: ControlModels, size: Size,
                    hires_size: Size | None = None, seed: int = 0) -> ControlRequest:
    """Resolve, load and preprocess every unit (before any denoising, so a bad name or a faceless image fails
    fast). `size` is the first pass's (width, height); `hires_size` the hires pass's, when hires fix runs;
    `seed` sd-webui-controlnet's NumPy seed (shuffle) and the control images' VAE samples.

    Raises:
        NotFoundError: an unknown model (listing the available ones), missing face or annotator models.
        RequestError: no face on an InstantID image.
    """
    notes: list[str] = []
    faces = FaceFinder(models.face_analyser)
    map_units, face_unit, maps, prompts = [], None, [], []
    for unit in units:
        entry = _resolve_model(unit, catalog, notes)
        image = hints.unit_input(unit.image, unit.mask)
        if unit.is_image_prompt:
            images = [image, *(hints.unit_input(extra, None) for extra in unit.extra_images)]
            prompts.append(prepare_image_prompt(unit, entry.path, models, images))
            continue
        if unit.module.name == "inpaint_only+lama" and unit.resize_mode == RESIZE_AND_FILL:
            # "inpaint_only+lama is special and required outpaint fix": the input is first fitted to the final
            # size with its border masked, so that LaMa fills the border too.
            image = fit_map(image, RESIZE_AND_FILL, *(hires_size or size))
        resolution = (pixel_perfect_resolution(unit.image.size, size, unit.resize_mode)
                      if unit.pixel_perfect else unit.processor_res)
        if unit.is_face_embedding:
            weights = models.ip_adapter(entry.path)
            check_module_fits(describe_adapter(weights, entry.path.name), unit.module.name, None,
                              unit.field("model"), unit.model)
            face = faces(image, int(resolution), unit.field("image")).face
            face_unit = FaceUnit(unit, weights, torch.from_numpy(face.embedding.copy()))
            continue
        tools = MapTools(functools.partial(models.annotator, field=unit.field("module")), faces,
                         seed=seed & 0xFFFFFFFF, field=unit.field("image"))
        detected = detect_map(unit.module.name, image, resolution, (unit.threshold_a, unit.threshold_b), tools)
        map_units.append(MapUnit(unit, models.controlnet(entry.path), detected))
        if unit.save_detected_map:
            # sd-webui-controlnet stores the hires map first, then the first pass's.
            maps += [hints.display_map(fit_map(detected, unit.resize_mode, *s)) for s in (hires_size, size) if s]
    return ControlRequest(map_units, face_unit, maps, notes, seed, prompts)


def _prompt_pass(prompt: ImagePrompt, hires: bool) -> ImagePromptPass:
    unit = prompt.unit
    return ImagePromptPass(prompt.cond, prompt.uncond, unit.weight, unit.guidance_start, unit.guidance_end,
                           runs=unit.runs_in(hires), clip_cond=prompt.clip_cond, clip_uncond=prompt.clip_uncond,
                           shortcut=prompt.adapter.shortcut)


def _soft(unit: ControlUnit, hires: bool) -> bool:
    """Soft injection: any mode but Balanced, and canny / mlsd in the hires pass (`hook.py`)."""
    return unit.control_mode != BALANCED or (hires and unit.module.soft_in_hires)


class _Counted:
    """A control model that counts its forwards into the request (the benchmarks compare counts)."""

    def __init__(self, model, request: ControlRequest):
        self._model, self._request = model, request

    def __call__(self, *args, **kwargs):
        self._request.model_calls += 1
        return self._model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def _resolve_model(unit: ControlUnit, catalog, notes: list[str]):
    found = catalog.find_controlnet(unit.model, unit.field("model"))
    if found.hash_matched is False:
        notes.append(f"ControlNet model {unit.model!r}: no file has that hash; used {found.entry.title}")
    return found.entry


def _check_fits(unit: ControlUnit, model, unet, face_tokens: FaceTokens | None) -> None:
    """A ControlNet adds residuals to the UNet's skip connections: the block widths must agree, and its
    cross-attention must read the context it will get (the prompt, or InstantID's face tokens)."""
    context_width = face_tokens.cond.shape[-1] if face_tokens is not None else unet.config.cross_attention_dim
    if (tuple(model.config.block_out_channels) != tuple(unet.config.block_out_channels)
            or model.config.cross_attention_dim != context_width):
        raise RequestError(unit.field("model"), f"{unit.model!r} does not fit this checkpoint (a ControlNet for "
                                                "another model family, e.g. SD1.5 vs SDXL)")
