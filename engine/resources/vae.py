"""A1111's `sd_vae` setting: which VAE a request decodes with, external VAE files loaded once and cached."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.pipeline import A1111Pipeline
from engine.resources.cache import ResidentCache
from engine.resources.catalog import ModelCatalog
from engine.resources.entries import CheckpointEntry, VaeEntry
from engine.resources.loader import Precision, checkpoint_config_folder, load_vae
from engine.resources.model_files import load_listed
from engine.speedups import is_fp16_fixed_vae


logger = logging.getLogger(__name__)

AUTOMATIC = "Automatic"
BAKED_IN = "None"
SD_VAE_FIELD = "override_settings.sd_vae"
# External VAEs kept loaded (≈ 160 MB each in fp16): a request mix of a couple of VAEs never reloads.
RESIDENT_VAES = 2


@dataclass(frozen=True)
class VaeKey:
    """One loaded VAE: the file, read with the architecture config of the checkpoint it decodes for."""

    path: Path
    config_folder: Path


class ExternalVaes:
    """Resolves `sd_vae` as A1111's `sd_vae.resolve_vae` does and serves each request a pipeline view.

    The shared pipeline is never changed: a request with an external VAE gets `pipe.with_vae(vae)`, a new
    `A1111Pipeline` over the same UNet, text encoders and scheduler config.
    """

    def __init__(self, catalog: ModelCatalog, config_roots: Sequence[Path], precision: Precision):
        self.catalog = catalog
        self.config_roots = tuple(config_roots)
        self.precision = precision
        self._loaded: ResidentCache[VaeKey, object] = ResidentCache(self._load, capacity=RESIDENT_VAES)

    def resolve(
        self, setting: str | None, checkpoint: CheckpointEntry, field: str = SD_VAE_FIELD
    ) -> VaeEntry | None:
        """The external VAE file a request uses; None means the checkpoint's own (baked-in) VAE.

        Args:
            setting: `override_settings.sd_vae`; None or "Automatic" (A1111's default): a VAE whose file name
                starts with the checkpoint's (`find_vae_near_checkpoint`), else the baked-in one. "None": the
                baked-in one. Else a VAE name (file name, stem or path under `VAE/`).
            checkpoint: the checkpoint the request runs on.
            field: the request field holding `setting`, for errors (ADetailer's `ad_vae` too).

        Raises:
            NotFoundError: an unknown VAE name, listing the VAEs on disk (A1111 logs, uses the baked-in VAE).
        """
        if setting is None or setting == AUTOMATIC:
            return self.catalog.vae_near_checkpoint(checkpoint)
        if setting == BAKED_IN:
            return None
        return self.catalog.find_vae(setting, field)

    def pipeline_for(
        self, pipe: A1111Pipeline, vae: VaeEntry | None, checkpoint: CheckpointEntry
    ) -> A1111Pipeline:
        """`pipe` itself for the baked-in VAE, else a view of it decoding and encoding with `vae`.

        Loads the VAE on first use, with `checkpoint`'s architecture config (a VAE file carries none).
        """
        if vae is None:
            return pipe
        config_folder = checkpoint_config_folder(checkpoint.path, self.config_roots)
        return pipe.with_vae(self._loaded.get(VaeKey(vae.path, config_folder)))

    def resident(self) -> list[VaeKey]:
        return self._loaded.resident()

    def fp16_fixed(self, checkpoint: CheckpointEntry, precision: Precision):
        """The fp16-fixed SDXL VAE (`SDXL_VAE_FP16_FIX`) for `checkpoint`, kept in fp16, or None.

        None when the device runs fp32 (nothing to avoid) or no VAE file in `models/VAE` is named like
        madebyollin's `sdxl-vae-fp16-fix`. Its config is the checkpoint's with `force_upcast` off: the fix exists
        so that decoding in fp16 does not overflow.
        """
        if precision.dtype != torch.float16:
            return None
        entry = next((vae for vae in self.catalog.vaes() if is_fp16_fixed_vae(vae.name)), None)
        if entry is None:
            logger.warning("SDXL_VAE_FP16_FIX is set but no fp16-fix VAE is in the VAE folder")
            return None
        config_folder = checkpoint_config_folder(checkpoint.path, self.config_roots)
        vae = self._loaded.get(VaeKey(entry.path, config_folder))
        vae.register_to_config(force_upcast=False)
        logger.info("SDXL decodes with %s in fp16", entry.name)
        return vae.to(precision.dtype)

    def _load(self, key: VaeKey):
        return load_listed(
            self.catalog, key.path, SD_VAE_FIELD, lambda: load_vae(key.path, key.config_folder, self.precision)
        )


def vae_infotext_fields(vae: VaeEntry | None) -> dict[str, str | None]:
    """`InfotextFields` keyword arguments for A1111's `VAE hash` (sha256[:10]) and `VAE` (file name with
    extension): set only when an external file is used, as A1111 prints them."""
    if vae is None:
        return {"vae_hash": None, "vae_name": None}
    return {"vae_hash": vae.shorthash, "vae_name": vae.name}
