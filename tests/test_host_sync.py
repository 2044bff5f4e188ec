"""No step of the denoising loop waits for the GPU: counted with a dispatch mode, every sampler, two step counts.

No GPU runs here, so the meta device stands in for it: the latents, the model and everything derived from them
live on "meta", the schedule and the sampler's bookkeeping on the host (CPU), exactly as they would beside a
CUDA device. A `TorchDispatchMode` sees every aten op and counts what makes a host wait for an accelerator:

- a Python value read from a device tensor (`_local_scalar_dense`, `item`, `is_nonzero`, `equal`, `nonzero`, or
  any op turning device tensors into a non-tensor), i.e. `.item()`, `float()`, `if tensor:`, comparisons;
- a device-to-host copy (`.cpu()`, `.numpy()`, `.tolist()`);
- a blocking host-to-device copy (`.to("cuda")` without `non_blocking`: PyTorch synchronises the stream after a
  pageable copy).

Host-side reads of the CPU schedule tensors are allowed: they never touch the device.
"""

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from engine.demo.tiny import tiny_components
from engine.samplers import SAMPLERS, resolve_sampler
from engine.sampling.guidance import GuidedUNet, StepConditioning, constant
from engine.sampling.loop import denoise
from engine.sampling.noise import ImageNoise
from engine.sampling.schedulers import SamplerOptions, prepare_sampler


pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde clamps query times

DEVICE = torch.device("meta")
CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
SEEDS = [11, 12]
SCALAR_READS = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero"}
COPIES = {"_to_copy", "copy_", "to"}
# DPM adaptive decides each step from the error norm of the latents: reading it is the algorithm (A1111's
# k-diffusion `dpm_adaptive` does the same). Every other sampler's evaluation points depend on the schedule only.
NEEDS_HOST_DECISIONS = {"DPM adaptive"}
RUNNABLE = [row.name for row in SAMPLERS if not row.unsupported]


class SyncCounter(TorchDispatchMode):
    """Counts the ops that would make the host wait for `device`, by kind, with the op names.

    The meta device has no values, so a read or a copy out of it is answered with a placeholder (zeros) after
    being counted: a run with waits still runs to the end, and the count is the whole run's.
    """

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.waits = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [leaf for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)]
        on_device = any(tensor.device == self.device for tensor in tensors)
        name = func.__name__.split(".")[0]
        if on_device and name in SCALAR_READS:
            self.waits[f"read {name}"] += 1
            return torch.zeros((), dtype=tensors[0].dtype).item() if name != "nonzero" else func(*args, **kwargs)
        if name in COPIES and self._device_to_host(name, tensors, kwargs):
            self.waits[f"device-to-host {name}"] += 1
            source = tensors[0]
            return torch.zeros(source.shape, dtype=kwargs.get("dtype") or source.dtype)
        result = func(*args, **kwargs)
        if on_device and not _is_tensors(result):
            self.waits[f"read {name}"] += 1
        elif name in COPIES and _is_tensors(result):
            self._count_upload(name, tensors, result, kwargs)
        return result

    def _device_to_host(self, name, tensors, kwargs) -> bool:
        if name == "copy_":
            return tensors[-1].device == self.device and tensors[0].device.type == "cpu"
        target = kwargs.get("device")
        return tensors[0].device == self.device and target is not None and torch.device(target).type == "cpu"

    def _count_upload(self, name, tensors, result, kwargs):
        source = tensors[-1] if name == "copy_" else tensors[0]
        target = tensors[0] if name == "copy_" else result
        blocking = not kwargs.get("non_blocking", False)
        if source.device.type == "cpu" and target.device == self.device and source.dim() > 0 and blocking:
            self.waits[f"blocking host-to-device {name}"] += 1


def _is_tensors(result) -> bool:
    leaves = tree_leaves(result)
    return all(isinstance(leaf, torch.Tensor) for leaf in leaves)


def cheap_model(x_in, t, call_index):
    """A zero-cost noise prediction that still depends on the latents (and the device timestep)."""
    return x_in * 0.5 + t * 1e-4


def sampler_run_waits(name: str, steps: int, predict=cheap_model) -> collections.Counter:
    """Prepare `name` for `steps` steps (host work, not counted) and count the waits of the whole loop."""
    noise = ImageNoise((4, 8, 8), SEEDS, device="cpu", source="CPU")
    initial = noise.first()
    sampler = prepare_sampler(
        resolve_sampler(name, None), steps_total=steps, steps_run=steps, scheduler_config=CONFIG, seeds=SEEDS,
        generators=noise.generators, options=SamplerOptions(randn_source="CPU"), device=DEVICE,
    )
    start = (initial * sampler.start_sigma).to(DEVICE)
    with SyncCounter(DEVICE) as counter:
        final = denoise(sampler, start, predict)
    assert final.device == DEVICE and final.shape == start.shape
    return counter.waits


@pytest.mark.parametrize("name", [name for name in RUNNABLE if name not in NEEDS_HOST_DECISIONS])
def test_no_sampler_step_waits_for_the_device(name):
    few, more = sampler_run_waits(name, 3), sampler_run_waits(name, 7)
    assert few == more == collections.Counter(), f"{name}: {dict(few)} with 3 steps, {dict(more)} with 7"


def test_adaptive_is_the_only_sampler_reading_the_latents():
    # The exemption is real, and the counter catches it: DPM adaptive reads its error norm at every step.
    waits = sampler_run_waits("DPM adaptive", 4)
    assert waits["read _local_scalar_dense"] > 0
    assert set(RUNNABLE) >= NEEDS_HOST_DECISIONS


def test_counter_sees_the_syncs_it_forbids():
    x = torch.ones(2, 2, device=DEVICE)
    with SyncCounter(DEVICE) as counter:
        x.sum().to("cpu")
        torch.ones(3).to(DEVICE)
        torch.ones(3).to(DEVICE, non_blocking=True)
        torch.tensor(2.0) * x  # a host scalar beside device tensors is not a wait
    assert counter.waits == {"device-to-host _to_copy": 1, "blocking host-to-device _to_copy": 1}


def test_a_host_timestep_per_step_would_be_counted():
    """What the loop avoids: the UNet copying a host timestep to the device at every call."""

    def copies_timestep(x_in, t, call_index):
        return x_in * 0.5 + t.cpu()[None].to(DEVICE).sum() * 1e-4

    few, more = sampler_run_waits("Euler", 3, copies_timestep), sampler_run_waits("Euler", 6, copies_timestep)
    assert sum(few.values()) < sum(more.values())


@pytest.fixture(scope="module")
def meta_unet():
    unet = tiny_components("sd15")["unet"].eval()
    return unet.to(DEVICE)


# Batched CFG on a multistep sampler; separate cond/uncond passes on a Brownian SDE sampler (1 and 3 evaluations).
@pytest.mark.parametrize(("name", "uncond_tokens"), [("DPM++ 2M", 77), ("DPM++ SDE", 154)])
def test_guided_unet_loop_never_waits(meta_unet, name, uncond_tokens):
    """The real UNet with CFG (one batch, or separate passes for unequal prompt lengths) on the stand-in device."""
    width = meta_unet.config.cross_attention_dim
    conditioning = StepConditioning(
        cond=torch.zeros(2, 77, width, device=DEVICE), uncond=torch.zeros(2, uncond_tokens, width, device=DEVICE)
    )

    def waits(steps):
        unet = GuidedUNet(meta_unet, 7.0, constant(conditioning))
        with torch.no_grad():
            return sampler_run_waits(name, steps, unet)

    assert waits(1) == waits(2) == collections.Counter()
