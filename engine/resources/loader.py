"""Load a checkpoint (A1111 single file or diffusers folder) into an `A1111Pipeline`, offline."""

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from engine.errors import NotFoundError, UnsupportedError
from engine.pipeline import A1111Pipeline


logger = logging.getLogger(__name__)

# Key prefixes that identify the model family of an original (LDM/SGM) single-file checkpoint.
# The SDXL base holds OpenCLIP-G as its second embedder; the refiner holds it alone, as the first.
FAMILY_MARKERS = (
    ("sdxl", "conditioner.embedders.1.model."),
    ("sdxl_refiner", "conditioner.embedders.0.model."),
    ("sd15", "cond_stage_model.transformer."),
)
UNSUPPORTED_MARKERS = (("SD2.x (OpenCLIP-H text encoder)", "cond_stage_model.model."),)
# diffusers' own pipeline per family reads the single file (the refiner's: no CLIP-L, aesthetic score).
PIPELINE_CLASS_NAMES = {
    "sd15": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl_refiner": "StableDiffusionXLImg2ImgPipeline",
}
SUPPORTED_FAMILIES = "SD1.5, SDXL and the SDXL refiner"
# The UNet's first convolution: its input width tells an inpainting checkpoint (9 = latent + mask + masked
# image's latent) from a plain one (4), as A1111 picks `v1-inpainting-inference.yaml` or SDXL-inpaint by it.
UNET_INPUT_WEIGHT = "model.diffusion_model.input_blocks.0.0.weight"
UNET_INPUT_KINDS = {4: "plain", 9: "inpainting"}
# The weights whose shapes tell real configs from tiny ones: (checkpoint key, config file, how to read it).
SHAPE_PROBES = {
    "sd15": (
        (
            "model.diffusion_model.input_blocks.0.0.weight",
            "unet",
            lambda c: (c["block_out_channels"][0],),
            (0,),
        ),
        (
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
            "text_encoder",
            lambda c: (c["hidden_size"],),
            (1,),
        ),
    ),
    "sdxl": (
        (
            "model.diffusion_model.input_blocks.0.0.weight",
            "unet",
            lambda c: (c["block_out_channels"][0],),
            (0,),
        ),
        (
            "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
            "text_encoder",
            lambda c: (c["hidden_size"],),
            (1,),
        ),
    ),
    "sdxl_refiner": (
        (
            "model.diffusion_model.input_blocks.0.0.weight",
            "unet",
            lambda c: (c["block_out_channels"][0],),
            (0,),
        ),
        (
            "conditioner.embedders.0.model.token_embedding.weight",
            "text_encoder_2",
            lambda c: (c["hidden_size"],),
            (1,),
        ),
    ),
}


@dataclass(frozen=True)
class Precision:
    """Where and how a model runs: fp16 on CUDA, fp32 on CPU (A1111's defaults, SDPA attention either way)."""

    device: torch.device
    dtype: torch.dtype

    @classmethod
    def for_device(cls, device: str) -> "Precision":
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        resolved = torch.device(device)
        return cls(resolved, torch.float16 if resolved.type == "cuda" else torch.float32)


def load_pipeline(path: Path, config_roots: Sequence[Path], precision: Precision) -> A1111Pipeline:
    """Load `path` (a `.safetensors` file or a diffusers folder) straight to the device and dtype."""
    import diffusers  # deferred: importing diffusers pipelines costs seconds
    from transformers.initialization import no_init_weights

    common = {"torch_dtype": precision.dtype, "local_files_only": True}
    if path.is_dir():
        source = diffusers.DiffusionPipeline.from_pretrained(path, **common)
    else:
        family = detect_family(path)
        config = find_config_folder(path, family, config_roots)
        pipeline_class = getattr(diffusers, PIPELINE_CLASS_NAMES[family])
        extra = {"safety_checker": None, "feature_extractor": None} if family == "sd15" else {}
        in_channels = unet_in_channels(path)
        if in_channels != json.loads((config / "unet" / "config.json").read_text())["in_channels"]:
            # The config folder describes the base architecture (4 input channels); an inpainting file's UNet
            # is built at the width of its weights, then handed to the pipeline loader as a ready component.
            extra["unet"] = diffusers.UNet2DConditionModel.from_single_file(
                str(path), config=str(config), subfolder="unet", in_channels=in_channels, **common
            )
        kind = UNET_INPUT_KINDS[in_channels]
        logger.info("loading %s (%s, %s UNet) with configs from %s", path.name, family, kind, config)
        read_ahead(path)
        # The models are built empty and filled from the file (diffusers' low_cpu_mem_usage path); skipping
        # their initialisers, as transformers' own from_pretrained does, saves seconds of work on empty tensors.
        with no_init_weights():
            source = pipeline_class.from_single_file(str(path), config=str(config), **common, **extra)
    components = {name: getattr(source, name, None) for name in _COMPONENTS}
    pipeline = A1111Pipeline(**components).to(precision.device)
    _upcast_if_needed(pipeline.vae, precision)
    return pipeline


def load_vae(path: Path, config_folder: Path, precision: Precision):
    """Load an external VAE (`VAE/*.safetensors` in LDM layout, or a diffusers VAE folder) to the device.

    Args:
        path: the VAE file or folder.
        config_folder: the checkpoint's diffusers config folder; its `vae/config.json` gives the architecture
            and scaling factor (a VAE file carries no config, and A1111 loads it into the checkpoint's VAE).
        precision: device and dtype, as for the checkpoint.
    """
    from diffusers import AutoencoderKL

    common = {"torch_dtype": precision.dtype, "local_files_only": True}
    if path.is_dir():
        vae = AutoencoderKL.from_pretrained(path, **common)
    elif path.suffix != ".safetensors":
        raise UnsupportedError(
            "override_settings.sd_vae", f"{path.name}: only .safetensors VAE files are loaded (no pickles)"
        )
    else:
        vae = AutoencoderKL.from_single_file(str(path), config=str(config_folder), subfolder="vae", **common)
    vae.to(precision.device)
    _upcast_if_needed(vae, precision)
    logger.info("loaded VAE %s with the config of %s", path.name, config_folder)
    return vae


def checkpoint_config_folder(path: Path, config_roots: Sequence[Path]) -> Path:
    """The diffusers folder describing a checkpoint's architecture: itself, or the matching config folder."""
    if path.is_dir():
        return path
    return find_config_folder(path, detect_family(path), config_roots)


def read_ahead(path: Path) -> None:
    """Ask the kernel to read the whole file into the page cache now, in large sequential reads.

    safetensors maps the file, and the weights are first touched one page fault at a time when they are copied
    to the device; on a cold cache (a fresh worker, a network volume) that is slow random I/O. The read-ahead
    runs in the kernel while the models are built, so the faults find the pages already cached.
    """
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(descriptor)


def _upcast_if_needed(vae, precision: Precision) -> None:
    if precision.dtype != torch.float32 and vae.config.get("force_upcast", False):
        # SDXL's original VAE overflows in fp16 (black images); A1111 retries such decodes in fp32.
        vae.to(torch.float32)


_COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler", "text_encoder_2", "tokenizer_2")


def detect_family(path: Path) -> str:
    """"sd15", "sdxl" or "sdxl_refiner", from the checkpoint's key names (the file name says nothing reliable)."""
    if path.suffix != ".safetensors":
        raise UnsupportedError(
            "sd_model_checkpoint", f"{path.name}: only .safetensors checkpoints are loaded (no pickles)"
        )
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    for family, prefix in FAMILY_MARKERS:
        if any(key.startswith(prefix) for key in keys):
            return family
    for name, prefix in UNSUPPORTED_MARKERS:
        if any(key.startswith(prefix) for key in keys):
            raise UnsupportedError(
                "sd_model_checkpoint", f"{path.name} is {name}; supported: {SUPPORTED_FAMILIES}"
            )
    raise UnsupportedError(
        "sd_model_checkpoint", f"{path.name} is not a checkpoint of {SUPPORTED_FAMILIES}"
    )


def unet_in_channels(path: Path) -> int:
    """The UNet's input channels in a single-file checkpoint: 4, or 9 for an inpainting model."""
    with safe_open(str(path), framework="pt") as handle:
        in_channels = handle.get_slice(UNET_INPUT_WEIGHT).get_shape()[1]
    if in_channels not in UNET_INPUT_KINDS:
        # 8 channels is instruct-pix2pix, which A1111 runs with an image-edit conditioning we do not have.
        raise UnsupportedError(
            "sd_model_checkpoint",
            f"{path.name}: a UNet with {in_channels} input channels; supported: 4 (plain) and 9 (inpainting)",
        )
    return in_channels


def find_config_folder(path: Path, family: str, config_roots: Sequence[Path]) -> Path:
    """The local diffusers config folder whose architecture matches the checkpoint's weight shapes."""
    with safe_open(str(path), framework="pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key, *_ in SHAPE_PROBES[family]}
    candidates = []
    folders = [folder for root in config_roots for folder in sorted(Path(root).glob("*/model_index.json"))]
    for folder in folders:
        index = json.loads(folder.read_text())
        if index.get("_class_name") != PIPELINE_CLASS_NAMES[family]:
            continue
        candidates.append(folder.parent.name)
        if all(_probe_matches(folder.parent, shapes, probe) for probe in SHAPE_PROBES[family]):
            return folder.parent
    raise NotFoundError(
        "sd_model_checkpoint",
        f"no architecture config in {', '.join(map(str, config_roots))} matches {path.name} ({family}); found {candidates or 'none'}. "
        "Run download_models.py to fetch the configs.",
    )


def _probe_matches(folder: Path, shapes: dict, probe) -> bool:
    key, component, read, dims = probe
    config_file = folder / component / "config.json"
    if not config_file.exists():
        return False
    expected = read(json.loads(config_file.read_text()))
    return tuple(shapes[key][d] for d in dims) == expected
