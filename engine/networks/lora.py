"""LoRA files applied to a pipeline for one request with diffusers' PEFT loader, and fully removed afterwards."""

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin
from diffusers.loaders.lora_base import set_adapters_for_text_encoder
from safetensors.torch import load_file

from engine.errors import ModelFileError, NotFoundError
from engine.networks import LoraRequest
from engine.resources.catalog import ModelCatalog
from engine.resources.entries import LoraEntry
from engine.resources.model_files import load_listed


logger = logging.getLogger(__name__)

ADAPTER_PREFIX = "request_lora_"
# transformers reports every base weight of CLIPTextModelWithProjection as "MISSING" when an adapter is
# loaded into it (only adapter weights are in a LoRA file); the table is noise in a worker's log.
NOISY_LOADER_LOG = "transformers.integrations.peft"


@dataclass
class AppliedLoras:
    """What a request's LoRA tags became: the adapters active now, response notes and infotext entries."""

    adapters: dict[str, LoraEntry] = field(default_factory=dict)  # adapter name -> file, loaded ones only
    notes: list[str] = field(default_factory=list)
    extra_generation_params: dict[str, str] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)  # name as written (A1111-cleaned) -> short hash


class _SDLoraView(StableDiffusionLoraLoaderMixin):
    """diffusers' LoRA loader over a pipeline's shared modules; it owns nothing of its own."""

    def __init__(self, pipe):
        self.unet = pipe.unet
        self.text_encoder = pipe.text_encoder
        self.components = pipe.components
        self.hf_device_map = getattr(pipe, "hf_device_map", None)


class _SDXLLoraView(StableDiffusionXLLoraLoaderMixin):
    def __init__(self, pipe):
        self.unet = pipe.unet
        self.text_encoder = pipe.text_encoder
        self.text_encoder_2 = pipe.text_encoder_2
        self.components = pipe.components
        self.hf_device_map = getattr(pipe, "hf_device_map", None)


@contextmanager
def apply_loras(pipe, catalog: ModelCatalog, requests: Sequence[LoraRequest]) -> Iterator[AppliedLoras]:
    """Load the requested LoRAs into `pipe` for the duration of the block, then remove every trace.

    Each distinct name becomes a diffusers adapter whose text-encoder and UNet weights are A1111's te/unet
    multipliers (`set_adapters`). A name mentioned twice is applied twice with its last multipliers, as
    A1111's network list does. A LoRA that is not found, or cannot be read, is skipped with a note (A1111:
    "Networks not found: …", not an error). On exit the adapters are deleted and the PEFT layers unloaded,
    so the modules' weights are bit-identical to before. Encode prompts inside the block: LoRAs change the
    text encoders too. Not re-entrant: one request at a time per pipeline.

    Args:
        pipe: an `A1111Pipeline` (SD1.5 or SDXL).
        catalog: resolves names by file stem or `ss_output_name` (A1111's alias).
        requests: parsed `<lora:…>` tags of the first prompt (`engine.networks.lora_requests`).
    """
    applied = AppliedLoras()
    if not requests:
        yield applied
        return
    view = _SDXLLoraView(pipe) if pipe.is_sdxl else _SDLoraView(pipe)
    if any(view.get_list_adapters().values()):
        raise RuntimeError("the pipeline already holds LoRA adapters; request LoRAs need a clean pipeline")
    try:
        _load_all(view, catalog, _grouped(requests), applied)
        yield applied
    finally:
        _remove_all(view, applied)


def _grouped(requests: Sequence[LoraRequest]) -> dict[str, tuple[LoraRequest, int]]:
    """Name as written -> (its last request, times mentioned)."""
    grouped: dict[str, tuple[LoraRequest, int]] = {}
    for request in requests:
        grouped[request.name] = (request, grouped.get(request.name, (request, 0))[1] + 1)
    return grouped


def _load_all(
    view, catalog: ModelCatalog, grouped: dict[str, tuple[LoraRequest, int]], applied: AppliedLoras
) -> None:
    missing, weights, hashes = [], {}, {}
    for index, (name, (request, mentions)) in enumerate(grouped.items()):
        try:
            entry = catalog.find_lora(name)
        except NotFoundError:
            logger.info("couldn't find LoRA with name %s", name)
            missing.append(name)
            continue
        adapter = f"{ADAPTER_PREFIX}{index}"
        try:
            state_dict = load_listed(catalog, entry.path, "lora", partial(_read_state_dict, entry.path))
        except NotFoundError:  # removed after it was listed: gone, as A1111 reports a missing network
            missing.append(name)
            continue
        except ModelFileError as exc:  # damaged: A1111 logs the failure and generates without it
            logger.warning("cannot load LoRA %s: %s", name, exc.message)
            applied.notes.append(f"LoRA {name!r} skipped: {exc.message}")
            continue
        try:
            with _quiet(NOISY_LOADER_LOG):
                view.load_lora_weights(state_dict, adapter_name=adapter)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            # A load can fail after some components took the adapter: take it out of them now, so the
            # request runs without it (the final unload removes what is left either way).
            if any(adapter in held for held in view.get_list_adapters().values()):
                view.delete_adapters([adapter])
            logger.warning("cannot load LoRA %s (%s): %s", name, entry.path, exc)
            applied.notes.append(f"LoRA {name!r} could not be loaded: {exc}")
            continue
        applied.adapters[adapter] = entry
        weights[adapter] = (request.te_multiplier * mentions, request.unet_multiplier * mentions)
        if entry.shorthash:
            hashes[name.replace(":", "").replace(",", "")] = entry.shorthash
    if missing:
        applied.notes.append("Networks not found: " + ", ".join(missing))
    if weights:
        _activate(view, weights)
    if hashes:
        applied.hashes = hashes
        applied.extra_generation_params["Lora hashes"] = lora_hashes_infotext(hashes)


def lora_hashes_infotext(hashes: dict[str, str]) -> str:
    """A1111's `Lora hashes` infotext value: "name: hash, name: hash"."""
    return ", ".join(f"{name}: {shorthash}" for name, shorthash in hashes.items())


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    quieted = logging.getLogger(logger_name)
    level = quieted.level
    quieted.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # PEFT warns whenever a second adapter joins a model: that is how several LoRAs are stacked.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            yield
    finally:
        quieted.setLevel(level)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors; pickled LoRAs (.pt/.ckpt) are read with `weights_only=True`, never executed."""
    if path.suffix.lower() == ".safetensors":
        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _activate(view, weights: dict[str, tuple[float, float]]) -> None:
    """Give each component the adapters it holds, scaled by A1111's multipliers: te for the text encoders,
    unet for the UNet. (The pipeline-wide `set_adapters` would also address components without them.)"""
    for component, held in view.get_list_adapters().items():
        names = [adapter for adapter in weights if adapter in held]
        if not names:
            continue
        scales = [weights[adapter][1 if component == "unet" else 0] for adapter in names]
        module = getattr(view, component)
        if component == "unet":
            module.set_adapters(names, scales)
        else:
            set_adapters_for_text_encoder(names, module, scales)


def _remove_all(view, applied: AppliedLoras) -> None:
    present = {adapter for adapters in view.get_list_adapters().values() for adapter in adapters}
    loaded = [adapter for adapter in applied.adapters if adapter in present]
    if loaded:
        view.delete_adapters(loaded)
    # Replaces every PEFT-wrapped layer with its original module and drops the PEFT configs.
    view.unload_lora_weights()
