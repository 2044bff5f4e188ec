"""The face restoration networks, loaded with spandrel: GFPGAN from spandrel itself, CodeFormer from
spandrel_extra_arches (A1111 v1.10 `modelloader.load_spandrel_model(..., expected_architecture=...)`).

spandrel builds GFPGAN with the released hyperparameters only (512 output, 512 style features, channel multiplier
2, narrow 1). `gfpgan_hyperparameters` reads them from the weights instead, so a width-reduced file (the demo
models') loads into the same `GFPGANv1Clean` class; a released file gets exactly spandrel's values and is
loaded by spandrel's own loader.
"""

import logging
import re
import warnings
from pathlib import Path

import spandrel
import torch

from engine.errors import UnsupportedError


logger = logging.getLogger(__name__)

# What spandrel's `GFPGANArch.load` passes to `GFPGANv1Clean` for every file (the v1.3/v1.4 "clean" models).
RELEASED_GFPGAN = {
    "out_size": 512,
    "num_style_feat": 512,
    "channel_multiplier": 2,
    "num_mlp": 8,
    "narrow": 1.0,
}
_STYLE_MLP = re.compile(r"^stylegan_decoder\.style_mlp\.(\d+)\.weight$")
_BODY_DOWN = re.compile(r"^conv_body_down\.(\d+)\.conv1\.weight$")
# The decoder's to_rgbs[3] works at 64 pixels, whose width is 256 · channel_multiplier · narrow.
_TO_RGB_64 = "stylegan_decoder.to_rgbs.3.modulated_conv.weight"


def restorer_registry() -> spandrel.ArchRegistry:
    """spandrel's architectures plus CodeFormer when spandrel_extra_arches is installed, in a registry of our
    own: spandrel's global one is untouched, and no other extra architecture (several are under
    non-commercial licences) is offered."""
    registry = spandrel.MAIN_REGISTRY.copy()
    try:
        with warnings.catch_warnings():
            # Importing the package compiles another architecture with the deprecated torch.jit.script.
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            from spandrel_extra_arches.architectures.CodeFormer import CodeFormerArch
    except ImportError:
        return registry
    registry.add(spandrel.ArchSupport.from_architecture(CodeFormerArch()))
    return registry


def load_restoration_net(path: Path, architecture: str, device: torch.device) -> spandrel.ImageModelDescriptor:
    """Load the network in `path`, which must be a `architecture` ("GFPGAN" or "CodeFormer") model, in fp32 on
    `device` (A1111 runs both in full precision; spandrel marks neither as half-safe).

    Raises:
        UnsupportedError: the file is not a model spandrel knows, or is another architecture.
    """
    registry = restorer_registry()
    loader = spandrel.ModelLoader(device="cpu", registry=registry)
    state_dict = spandrel.canonicalize_state_dict(loader.load_state_dict_from_file(path))
    support = next((arch for arch in registry.architectures("detection") if arch.detect(state_dict)), None)
    if support is None:
        raise UnsupportedError(str(path), "is not a model spandrel knows")
    found = support.architecture.id
    if found != architecture:
        raise UnsupportedError(str(path), f"is a {found} model, not {architecture}")
    if found == "GFPGAN" and (hyperparameters := gfpgan_hyperparameters(state_dict)) != RELEASED_GFPGAN:
        descriptor = _reduced_gfpgan(state_dict, support.architecture, hyperparameters)
    else:
        descriptor = support.architecture.load(state_dict)
    descriptor.to(device, torch.float32).eval()
    logger.info("loaded face restorer %s (%s) on %s", path.name, found, device)
    return descriptor


def gfpgan_hyperparameters(state_dict: dict[str, torch.Tensor]) -> dict[str, float | int]:
    """`GFPGANv1Clean`'s size hyperparameters, read from the shapes of its weights."""
    narrow = state_dict["stylegan_decoder.constant_input.weight"].shape[1] / 512
    width_64 = state_dict[_TO_RGB_64].shape[2]
    return {
        "out_size": 2 ** (sum(1 for key in state_dict if _BODY_DOWN.match(key)) + 2),
        "num_style_feat": state_dict["stylegan_decoder.style_mlp.1.weight"].shape[0],
        "channel_multiplier": round(width_64 / (256 * narrow)),
        "num_mlp": sum(1 for key in state_dict if _STYLE_MLP.match(key)),
        "narrow": narrow,
    }


def _reduced_gfpgan(state_dict, architecture, hyperparameters) -> spandrel.ImageModelDescriptor:
    """A width-reduced GFPGAN in spandrel's class and descriptor, with spandrel's other (fixed) settings."""
    from spandrel.architectures.GFPGAN import GFPGAN

    model = GFPGAN(**hyperparameters, decoder_load_path=None, fix_decoder=False, input_is_latent=True,
                   different_w=True, sft_half=True)
    return spandrel.ImageModelDescriptor(
        model, state_dict, architecture=architecture, purpose="FaceSR", tags=[], supports_half=False,
        supports_bfloat16=True, scale=1, input_channels=3, output_channels=3,
        size_requirements=spandrel.SizeRequirements(minimum=hyperparameters["out_size"]),
        call_fn=lambda net, image: net(image)[0],
    )
