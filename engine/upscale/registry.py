"""The one table of upscaler names a request may use, resolved against the models folder as A1111 names them."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.errors import NotFoundError, RequestError, choices
from engine.resources.catalog import ModelCatalog
from engine.upscale.esrgan import ModelUpscaler, Tiling, UpscaleModels
from engine.upscale.latent import LATENT_UPSCALERS, LatentUpscaler
from engine.upscale.pixel import BUILTIN_UPSCALERS, PixelUpscaler


logger = logging.getLogger(__name__)

Upscaler = LatentUpscaler | PixelUpscaler


@dataclass(frozen=True)
class RealEsrganModel:
    """One of A1111's Real-ESRGAN upscalers: the file it needs in `RealESRGAN/` and its factor."""

    stem: str
    scale: int


# A1111 `realesrgan_model.get_realesrgan_models`: display name → release file (downloaded there on first use;
# this worker never downloads, so a name resolves only when its file is in the models folder). A1111 shows
# only "R-ESRGAN 4x+" and "R-ESRGAN 4x+ Anime6B" unless `realesrgan_enabled_models` says otherwise; every
# one whose file is present is offered here.
REALESRGAN_MODELS: dict[str, RealEsrganModel] = {
    "R-ESRGAN General 4xV3": RealEsrganModel("realesr-general-x4v3", 4),
    "R-ESRGAN General WDN 4xV3": RealEsrganModel("realesr-general-wdn-x4v3", 4),
    "R-ESRGAN AnimeVideo": RealEsrganModel("realesr-animevideov3", 4),
    "R-ESRGAN 4x+": RealEsrganModel("RealESRGAN_x4plus", 4),
    "R-ESRGAN 4x+ Anime6B": RealEsrganModel("RealESRGAN_x4plus_anime_6B", 4),
    "R-ESRGAN 2x+": RealEsrganModel("RealESRGAN_x2plus", 2),
}
# A1111's ESRGAN upscaler reports this `model_name` and scale 4 for every file in ESRGAN/, whatever its factor.
ESRGAN_MODEL_NAME = "ESRGAN_4x"
ESRGAN_LISTED_SCALE = 4
# A1111's `UpscalerData` default scale, reported for "None", "Lanczos" and "Nearest".
BUILTIN_LISTED_SCALE = 4


class Upscalers:
    """Resolves upscaler names (latent modes, PIL resamplers, model files) and lists them as A1111 does.

    One instance per engine: it owns the cache of loaded models.

    Args:
        catalog: the models folder (kinds "esrgan" and "realesrgan").
        device: where upscaling models run.
        dtype: fp16 lets Real-ESRGAN models run in half precision (A1111's default on GPUs); fp32 never does.
        tiling: ESRGAN tile size and overlap (A1111's 192 / 8 by default).
        capacity: how many upscaling models stay loaded.
    """

    def __init__(self, catalog: ModelCatalog, device: torch.device | str, dtype: torch.dtype,
                 tiling: Tiling | None = None, capacity: int = 1):
        self.catalog = catalog
        self.models = UpscaleModels(device, dtype, capacity, catalog=catalog)
        self.tiling = tiling or Tiling()

    def get(self, name: str, field: str = "hr_upscaler") -> Upscaler:
        """The upscaler A1111 calls `name` (exact match); `field` names the request field in errors."""
        if name in LATENT_UPSCALERS:
            return LATENT_UPSCALERS[name]
        if name in BUILTIN_UPSCALERS:
            return BUILTIN_UPSCALERS[name]
        found = self._model_upscaler(name)
        if found is None:
            self.catalog.refresh("esrgan")
            self.catalog.refresh("realesrgan")
            found = self._model_upscaler(name)
        if found is not None:
            return found
        if name in REALESRGAN_MODELS:
            wanted = REALESRGAN_MODELS[name].stem
            raise NotFoundError(field, f"upscaler {name!r} needs {wanted}.pth in "
                                       f"{self.catalog.root / 'RealESRGAN'}, which is not there; "
                                       f"available: {choices(self.names())}")
        raise NotFoundError(field, f"no upscaler named {name!r}; available: {choices(self.names())}")

    def pixel(self, name: str, field: str) -> PixelUpscaler:
        """A pixel-space upscaler (extras): latent modes are refused, they only work inside hires fix."""
        upscaler = self.get(name, field)
        if isinstance(upscaler, LatentUpscaler):
            pixel_names = [n for n in self.names() if n not in LATENT_UPSCALERS]
            raise RequestError(field, f"{name!r} upscales latents and works only in hires fix; "
                                      f"image upscalers: {choices(pixel_names)}")
        return upscaler

    def names(self) -> list[str]:
        """Every name `get` accepts, in A1111's hires menu order: latent modes, then `listing()` order."""
        return [*LATENT_UPSCALERS, *(upscaler.name for upscaler in self._pixel_upscalers())]

    def listing(self) -> list[dict[str, Any]]:
        """`GET /sdapi/v1/upscalers`: `{name, model_name, model_path, model_url, scale}` per pixel upscaler.

        A1111's order: "None", "Lanczos", "Nearest", then models by lower-cased name. `model_path` is the local
        file (A1111 shows the download URL for Real-ESRGAN models; this worker never downloads).
        """
        listed = []
        for upscaler in self._pixel_upscalers():
            is_model = isinstance(upscaler, ModelUpscaler)
            listed.append({
                "name": upscaler.name,
                "model_name": ESRGAN_MODEL_NAME if is_model and upscaler.family == "esrgan" else None,
                "model_path": str(upscaler.path) if is_model else None,
                "model_url": None,
                "scale": upscaler.scale if is_model else BUILTIN_LISTED_SCALE,
            })
        return listed

    def realesrgan_listing(self) -> list[dict[str, Any]]:
        """`GET /sdapi/v1/realesrgan-models`: `{name, path, scale}` for A1111's six names (path None when the
        file is missing; A1111 shows the download URL)."""
        found = {upscaler.name: upscaler for upscaler in self._realesrgan_upscalers()}
        return [{"name": name, "path": str(found[name].path) if name in found else None, "scale": model.scale}
                for name, model in REALESRGAN_MODELS.items()]

    def _pixel_upscalers(self) -> list[PixelUpscaler]:
        models = [*self._esrgan_upscalers(), *self._realesrgan_upscalers()]
        return [*BUILTIN_UPSCALERS.values(), *sorted(models, key=lambda upscaler: upscaler.name.lower())]

    def _model_upscaler(self, name: str) -> ModelUpscaler | None:
        return next((u for u in [*self._esrgan_upscalers(), *self._realesrgan_upscalers()] if u.name == name), None)

    def _esrgan_upscalers(self) -> list[ModelUpscaler]:
        # A1111 names each ESRGAN/ file by its stem (`modelloader.friendly_name`) and loads it in fp32.
        return [self._model(entry.stem, entry.path, ESRGAN_LISTED_SCALE, "esrgan", prefer_half=False)
                for entry in self.catalog.entries("esrgan")]

    def _realesrgan_upscalers(self) -> list[ModelUpscaler]:
        stems: dict[str, Path] = {}
        for entry in self.catalog.entries("realesrgan"):
            stems.setdefault(entry.stem, entry.path)
        return [self._model(name, stems[model.stem], model.scale, "realesrgan", prefer_half=True)
                for name, model in REALESRGAN_MODELS.items() if model.stem in stems]

    def _model(self, name: str, path: Path, scale: int, family: str, prefer_half: bool) -> ModelUpscaler:
        return ModelUpscaler(name=name, path=path, scale=scale, family=family, prefer_half=prefer_half,
                             models=self.models, tiling=self.tiling)
