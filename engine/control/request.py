"""A request's ControlNet/InstantID units made ready once: models resolved and loaded, maps drawn, the face
embedded. Then the IP-Adapter is installed around the generation and each denoising pass gets its stack."""

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from engine.control.instantid import FaceTokens, InstalledAdapter, ip_adapter_installed
from engine.control.models import ControlModels
from engine.control.preprocess import FaceFinder, detect_map, fit_map, pixel_perfect_resolution, to_rgb_array
from engine.control.residuals import ControlNetPass, ControlStack, GuidanceClock, IpAdapterPass
from engine.control.units import BALANCED, CONTROL_MORE_IMPORTANT, ControlUnit
from engine.errors import RequestError


logger = logging.getLogger(__name__)

Size = tuple[int, int]  # (width, height) in pixels


@dataclass(frozen=True)
class MapUnit:
    unit: ControlUnit
    model: torch.nn.Module  # ControlNetModel
    detected: np.ndarray  # the preprocessor's map (HWC uint8 RGB), before fitting to a pass size


@dataclass(frozen=True)
class FaceUnit:
    unit: ControlUnit
    weights: dict  # the IP-Adapter state dict
    embedding: torch.Tensor  # (512,), raw


class ControlRequest:
    """Prepared units of one request. Use `applied(unet)` around the passes and `stack_for_pass` per pass."""

    def __init__(self, map_units: Sequence[MapUnit], face_unit: FaceUnit | None,
                 detected_maps: list[Image.Image], notes: list[str]):
        self.map_units = tuple(map_units)
        self.face_unit = face_unit
        self.detected_maps = detected_maps  # appended to the response's images after the results
        self.notes = notes  # e.g. a model found by name whose hash differs from the requested one
        self._adapters: dict[int, InstalledAdapter] = {}  # by id() of the UNet, while `applied`
        self._tokens: FaceTokens | None = None

    @contextmanager
    def applied(self, *unets) -> Iterator[None]:
        """Install the IP-Adapter (if a face unit is present) into each distinct UNet the passes use (hires fix
        may run another checkpoint); removed on exit, whatever happens, the UNets' weights untouched."""
        if self.face_unit is None:
            yield
            return
        unit = self.face_unit.unit
        with ExitStack() as installed:
            for unet in {id(unet): unet for unet in unets}.values():
                adapter = installed.enter_context(ip_adapter_installed(unet, self.face_unit.weights, unit.weight))
                self._adapters[id(unet)] = adapter
            try:
                yield
            finally:
                self._adapters.clear()
                self._tokens = None

    def stack_for_pass(self, unet, width: int, height: int, steps: int, second_order: bool = False,
                       hires: bool = False) -> ControlStack:
        """The control stack for one pass at width × height running `steps` sampler steps.

        Args:
            unet: the pass's UNet (to check the ControlNets fit it).
            width, height: the pass's image size in pixels (hires fix: the hires size).
            steps: sampler steps this pass runs; second_order: two model calls per step.
            hires: the second pass of hires fix (unit `hr_option`, canny's soft hires scales).
        """
        adapter = self._adapters.get(id(unet))
        if self.face_unit is not None and adapter is None:
            raise RuntimeError("stack_for_pass needs the IP-Adapter in this UNet: call it inside applied(unet)")
        controlnets = [self._controlnet_pass(item, unet, (width, height), hires)
                       for item in self.map_units if item.unit.runs_in(hires)]
        ip_adapter = None
        if self.face_unit is not None:
            unit = self.face_unit.unit
            ip_adapter = IpAdapterPass(adapter, self.face_unit.embedding, unit.weight,
                                       unit.guidance_start, unit.guidance_end, runs=unit.runs_in(hires))
        return ControlStack(controlnets, ip_adapter, GuidanceClock(steps, 2 if second_order else 1))

    def _controlnet_pass(self, item: MapUnit, unet, size: Size, hires: bool) -> ControlNetPass:
        unit, model = item.unit, item.model
        face_tokens = self._face_tokens() if unit.is_instant_id_controlnet else None
        _check_fits(unit, model, unet, face_tokens)
        fitted = fit_map(item.detected, unit.resize_mode, *size)
        hint = torch.from_numpy(fitted).permute(2, 0, 1)[None].to(model.device, torch.float32) / 255.0
        return ControlNetPass(
            model=model, hint=hint.to(model.dtype), weight=unit.weight,
            start=unit.guidance_start, end=unit.guidance_end,
            soft=unit.control_mode != BALANCED or (hires and unit.module.soft_in_hires),
            cond_only=unit.control_mode == CONTROL_MORE_IMPORTANT, face_tokens=face_tokens)

    def _face_tokens(self) -> FaceTokens:
        """The face's image tokens (and the zero embedding's), projected once by the adapter's Resampler (the
        same weights in every UNet it is installed in)."""
        if self._tokens is None:
            adapter = next(iter(self._adapters.values()))
            self._tokens = adapter.face_tokens(self.face_unit.embedding)
        return self._tokens


def prepare_control(units: Sequence[ControlUnit], catalog, models: ControlModels, size: Size,
                    hires_size: Size | None = None) -> ControlRequest:
    """Resolve, load and preprocess every unit (before any denoising, so a bad name or a faceless image fails
    fast). `size` is the first pass's (width, height); `hires_size` the hires pass's, when hires fix runs.

    Raises:
        NotFoundError: an unknown model (listing the available ones) or missing face models.
        RequestError: no face on an InstantID image.
    """
    notes: list[str] = []
    faces = FaceFinder(models.face_analyser)
    map_units, face_unit, maps = [], None, []
    for unit in units:
        entry = _resolve_model(unit, catalog, notes)
        image = to_rgb_array(unit.image)
        resolution = (pixel_perfect_resolution(unit.image.size, size, unit.resize_mode)
                      if unit.pixel_perfect else unit.processor_res)
        if unit.is_face_embedding:
            face = faces(image, resolution, unit.field("image")).face
            face_unit = FaceUnit(unit, models.ip_adapter(entry.path), torch.from_numpy(face.embedding.copy()))
            continue
        detected = detect_map(unit.module.name, image, resolution, (unit.threshold_a, unit.threshold_b), faces,
                              unit.field("image"))
        map_units.append(MapUnit(unit, models.controlnet(entry.path), detected))
        if unit.save_detected_map:
            # sd-webui-controlnet stores the hires map first, then the first pass's.
            maps += [Image.fromarray(fit_map(detected, unit.resize_mode, *s)) for s in (hires_size, size) if s]
    return ControlRequest(map_units, face_unit, maps, notes)


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
