"""Opt-in speed-ups, all off by default: what each changes is documented in the README ("Speed-ups").

They are applied once, when a model is loaded (never per request), so every request on a resident model runs the
same way. Each is a worker setting read from the environment:

- `COMPILE_UNET=1`: `torch.compile` of the UNet's and ControlNets' repeated transformer blocks (regional
  compilation, diffusers `compile_repeated_blocks`), `dynamic=False`: each latent size compiles once (its own
  shape bucket) on first use, kept on disk in `TORCHINDUCTOR_CACHE_DIR`. Same images up to float rounding.
- `CHANNELS_LAST=1`: UNet and ControlNet weights in channels-last memory format (faster cuDNN convolutions on
  tensor-core GPUs). Same images up to float rounding.
- `SDXL_VAE_FP16_FIX=1`: on fp16 devices, SDXL checkpoints decode with the fp16-fixed VAE (madebyollin
  `sdxl-vae-fp16-fix`) when such a file is in `models/VAE`, in fp16, instead of the original VAE upcast to fp32.
  Changes pixels slightly (the fixed VAE is a fine-tune).
- `PAD_COND_UNCOND=1`: the worker default of A1111's `pad_cond_uncond` option (see `engine.prompts.options`).
- `DEEPCACHE_INTERVAL=N` (N >= 2), `DEEPCACHE_BRANCH=B`: DeepCache step caching (`engine.sampling.step_cache`):
  the whole UNet runs at every N-th model call of a pass, the calls between reuse its deep features and run
  only the layers around skip branch B. Changes pixels; the infotext says so.
"""

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass


logger = logging.getLogger(__name__)

# diffusers `UNet2DConditionModel._repeated_blocks`; `ControlNetModel` declares none but holds the same blocks.
REPEATED_BLOCKS = ("BasicTransformerBlock",)
# File names of the fp16-fixed SDXL VAE as published ("sdxl-vae-fp16-fix", "sdxl_vae_fp16_fix", "...fp16fix").
FP16_FIX_NAME = re.compile(r"fp16[-_ ]?fix", re.IGNORECASE)
TRUE = ("1", "true", "yes", "on")
FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class StepCaching:
    """DeepCache's uniform schedule: the full UNet at every `interval`-th model call of a pass, and between them
    only the layers outside skip branch `branch` (0 = the shallowest, DeepCache's Stable Diffusion setting)."""

    interval: int
    branch: int = 0

    def infotext(self) -> dict[str, int]:
        return {"DeepCache interval": self.interval, "DeepCache branch": self.branch}


@dataclass(frozen=True)
class SpeedUps:
    """Which opt-in speed-ups the worker applies (all off: A1111's results, eager PyTorch)."""

    compile_unet: bool = False
    channels_last: bool = False
    sdxl_vae_fp16_fix: bool = False
    pad_cond_uncond: bool = False
    deepcache_interval: int = 0  # 0: off
    deepcache_branch: int = 0

    def __post_init__(self):
        if self.deepcache_interval != 0 and self.deepcache_interval < 2:
            raise ValueError(
                f"DEEPCACHE_INTERVAL must be 0 (off) or an integer >= 2, got {self.deepcache_interval} "
                "(1 would run the whole UNet at every call, i.e. no caching)"
            )
        if self.deepcache_branch < 0:
            raise ValueError(f"DEEPCACHE_BRANCH must be an integer >= 0, got {self.deepcache_branch}")

    @property
    def step_caching(self) -> StepCaching | None:
        if not self.deepcache_interval:
            return None
        return StepCaching(self.deepcache_interval, self.deepcache_branch)

    def option_defaults(self) -> dict[str, bool]:
        """A1111 options whose worker default these settings change, as `GET /sdapi/v1/options` lists them."""
        return {"pad_cond_uncond": self.pad_cond_uncond}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "SpeedUps":
        """`COMPILE_UNET`, `CHANNELS_LAST`, `SDXL_VAE_FP16_FIX`, `PAD_COND_UNCOND`: 1/true/yes/on or
        0/false/no/off; `DEEPCACHE_INTERVAL` and `DEEPCACHE_BRANCH`: integers (unset = 0)."""
        return cls(
            compile_unet=_flag(env, "COMPILE_UNET"),
            channels_last=_flag(env, "CHANNELS_LAST"),
            sdxl_vae_fp16_fix=_flag(env, "SDXL_VAE_FP16_FIX"),
            pad_cond_uncond=_flag(env, "PAD_COND_UNCOND"),
            deepcache_interval=_integer(env, "DEEPCACHE_INTERVAL", "0 (off) or an integer >= 2"),
            deepcache_branch=_integer(env, "DEEPCACHE_BRANCH", "an integer >= 0"),
        )

    def prepare_denoiser(self, model):
        """Apply the memory format and compilation to a freshly loaded UNet or ControlNet (in place)."""
        import torch  # deferred: settings are read by torch-free code

        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile_unet:
            compile_regions(model)
        return model


def compile_regions(model) -> int:
    """Compile every repeated transformer block of `model` (regional compilation); returns how many.

    `fullgraph=True` makes a graph break an error instead of a silent slowdown; `dynamic=False` specialises on
    each latent size, so a new size compiles once and reuses it afterwards (TorchInductor's on-disk cache in
    `TORCHINDUCTOR_CACHE_DIR` keeps the kernels across processes).
    """
    options = {"fullgraph": True, "dynamic": False}
    if getattr(model, "_repeated_blocks", None):
        model.compile_repeated_blocks(**options)
        compiled = sum(type(module).__name__ in model._repeated_blocks for module in model.modules())
    else:
        blocks = [module for module in model.modules() if type(module).__name__ in REPEATED_BLOCKS]
        for block in blocks:
            block.compile(**options)
        compiled = len(blocks)
    logger.info("compiling %d transformer blocks of %s (cache: %s)", compiled, type(model).__name__,
                os.environ.get("TORCHINDUCTOR_CACHE_DIR", "TorchInductor's default"))
    return compiled


def is_fp16_fixed_vae(name: str) -> bool:
    return bool(FP16_FIX_NAME.search(name))


def _flag(env: Mapping[str, str], key: str) -> bool:
    raw = env.get(key, "").strip().lower()
    if raw in TRUE:
        return True
    if raw in FALSE:
        return False
    raise ValueError(f"environment variable {key} must be one of 1/true/yes/on or 0/false/no/off, got {raw!r}")


def _integer(env: Mapping[str, str], key: str, accepted: str) -> int:
    raw = env.get(key, "").strip()
    try:
        return int(raw) if raw else 0
    except ValueError:
        raise ValueError(f"environment variable {key} must be {accepted}, got {raw!r}") from None
