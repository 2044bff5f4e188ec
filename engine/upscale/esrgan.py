"""ESRGAN-family upscaling models: loaded with spandrel, run tile by tile on A1111's PIL grid
(`upscaler_utils.upscale_with_model`), with the loaded models kept in a small cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from engine.errors import UnsupportedError
from engine.resources.cache import ResidentCache
from engine.resources.model_files import load_listed
from engine.upscale.grid import combine_grid, split_grid, transform_tiles
from engine.upscale.pixel import PixelUpscaler


if TYPE_CHECKING:
    # spandrel and its architectures take a quarter of a second to import: only a request that upscales with a
    # model pays it (see `_load_file`).
    import spandrel


logger = logging.getLogger(__name__)

# A1111 settings `ESRGAN_tile` and `ESRGAN_tile_overlap` (defaults 192 and 8); a tile of 0 means no tiling.
ESRGAN_TILE = 192
ESRGAN_TILE_OVERLAP = 8
UPSCALER_FIELD = "upscaler"


@dataclass(frozen=True)
class Tiling:
    """How a model is run over an image: square tiles of `size` pixels sharing at least `overlap` pixels."""

    size: int = ESRGAN_TILE
    overlap: int = ESRGAN_TILE_OVERLAP


class UpscaleModels:
    """Loaded upscaling models, least recently used evicted first; one instance per engine.

    A1111 reloads the file on every upscale; keeping the last `capacity` models resident makes a hires batch
    load its model once. Thread-safe (a `ResidentCache`).

    Args:
        device: where models run.
        dtype: the precision for models that ask for half precision (fp16 on CUDA, fp32 on CPU).
        capacity: how many models stay loaded.
        catalog: the catalog listing the files; with it, a damaged or vanished file is reported by name.
    """

    def __init__(self, device: torch.device | str, dtype: torch.dtype, capacity: int = 1, catalog=None):
        self.device = torch.device(device)
        self.dtype = dtype
        self.catalog = catalog
        self._cache: ResidentCache[tuple[Path, bool], spandrel.ImageModelDescriptor] = ResidentCache(
            self._load, capacity
        )

    def get(self, path: Path, prefer_half: bool) -> spandrel.ImageModelDescriptor:
        """The model in `path`, in half precision only if `prefer_half`, this cache's dtype is fp16 and the
        architecture supports it (A1111 `modelloader.load_spandrel_model(prefer_half=...)`)."""
        return self._cache.get((Path(path), prefer_half))

    def resident(self) -> list[tuple[Path, bool]]:
        return self._cache.resident()

    def _load(self, key: tuple[Path, bool]) -> spandrel.ImageModelDescriptor:
        if self.catalog is None:
            return self._load_file(*key)
        return load_listed(self.catalog, key[0], UPSCALER_FIELD, lambda: self._load_file(*key))

    def _load_file(self, path: Path, prefer_half: bool) -> spandrel.ImageModelDescriptor:
        import spandrel

        try:
            descriptor = spandrel.ModelLoader(device="cpu").load_from_file(path)
        except spandrel.UnsupportedModelError as exc:
            raise UnsupportedError(UPSCALER_FIELD, f"{path.name} is not an upscaling model spandrel knows") from exc
        if not isinstance(descriptor, spandrel.ImageModelDescriptor):
            raise UnsupportedError(UPSCALER_FIELD, f"{path.name} is a {descriptor.architecture.name} model, not an upscaler")
        if descriptor.architecture.id != "ESRGAN":
            # A1111 warns and uses the model anyway; spandrel runs every architecture the same way.
            logger.warning("%s is a %s model, not ESRGAN; using it anyway", path.name, descriptor.architecture.name)
        half = prefer_half and self.dtype == torch.float16 and descriptor.supports_half
        descriptor.to(self.device, torch.float16 if half else torch.float32).eval()
        # Channels-last convolutions run 2-3x faster on CPU (and suit fp16 tensor cores); results differ from
        # A1111's NCHW ones only by float rounding (about one uint8 value in a million moves by 1).
        descriptor.model.to(memory_format=torch.channels_last)
        logger.info("loaded upscaler %s (%s, %dx) on %s, %s", path.name, descriptor.architecture.name,
                    descriptor.scale, self.device, "fp16" if half else "fp32")
        return descriptor


@dataclass(frozen=True)
class ModelUpscaler(PixelUpscaler):
    """An upscaler backed by a model file in `ESRGAN/` or `RealESRGAN/`.

    Attributes:
        name: A1111's name for it ("R-ESRGAN 4x+", or the file stem for ESRGAN/ files).
        path: the model file.
        scale: the factor `/sdapi/v1/upscalers` reports (A1111's table value, not read from the file).
        family: the catalog kind it came from, "esrgan" or "realesrgan".
        prefer_half: A1111 runs RealESRGAN models in fp16 (unless `--no-half`) but ESRGAN/ models in fp32.
        models: the engine's model cache.
        tiling: tile size and overlap.
    """

    name: str
    path: Path
    scale: int
    family: str
    prefer_half: bool
    models: UpscaleModels = field(repr=False, compare=False)
    tiling: Tiling = Tiling()

    def enlarge(self, image: Image.Image, scale: float) -> Image.Image:
        model = self.models.get(self.path, self.prefer_half)
        return upscale_with_model(model, image, self.tiling)


def upscale_with_model(model: spandrel.ImageModelDescriptor, image: Image.Image, tiling: Tiling) -> Image.Image:
    """One pass of `model` over `image`, tile by tile on A1111's grid (whole image when `tiling.size` <= 0)."""
    if tiling.size <= 0:
        return run_model(model, image)
    grid = split_grid(image, tiling.size, tiling.size, tiling.overlap)
    return combine_grid(transform_tiles(grid, lambda tile: run_model(model, tile)))


@torch.inference_mode()
def run_model(model: spandrel.ImageModelDescriptor, image: Image.Image) -> Image.Image:
    """Run `model` on one RGB image as A1111's `upscale_pil_patch` does.

    ESRGAN-family models were trained on BGR images (OpenCV order), so channels are flipped on the way in
    and out; values are [0, 1] floats, and the output is clamped, scaled by 255 and *rounded* to uint8.
    """
    pixels = np.asarray(image.convert("RGB"))[:, :, ::-1].transpose(2, 0, 1) / 255.0
    tensor = torch.from_numpy(np.ascontiguousarray(pixels))[None].to(device=model.device, dtype=model.dtype)
    tensor = tensor.contiguous(memory_format=torch.channels_last)
    output = model(tensor)[0].float().cpu().clamp_(0, 1).numpy()
    rgb = (255.0 * output.transpose(1, 2, 0)).round().astype(np.uint8)[:, :, ::-1]
    return Image.fromarray(np.ascontiguousarray(rgb), "RGB")
