"""Per-step host cost of the engine's samplers vs k-diffusion's own functions (what A1111 runs), side by side.

    python bench/sampler_overhead.py [--steps 20] [--runs 5] [--size 64] [--batch 1] [--only "DPM++ SDE"]

The model costs nothing (ε = 0.5·x), so what is timed is the sampler: schedule bookkeeping, the step arithmetic,
noise (per-image generators, Brownian trees) and the model wrapper. Both sides sample the same latents on the same
sigmas: the engine through `prepare_sampler` + `denoise` (its whole per-request path), k-diffusion through
`sample_*` with A1111's wrapper (`CompVisDenoiser`) and A1111's noise (per-image generators via `randn_like`,
`BrownianTreeNoiseSampler` seeded with the image seeds). Runs alternate; medians of process CPU time (one torch
thread) are compared, which the shared machine's load disturbs far less than wall time. Restart, DDIM,
PLMS, UniPC and LCM are A1111 code, not k-diffusion functions: their engine time is shown alone.
"""

import argparse
import importlib
import importlib.util
import os
import platform
import statistics
import sys
import time
import types
import warnings
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.samplers import SAMPLERS, resolve_sampler  # noqa: E402
from engine.sampling.loop import denoise  # noqa: E402
from engine.sampling.model_schedule import alphas_cumprod_from_config  # noqa: E402
from engine.sampling.noise import ImageNoise  # noqa: E402
from engine.sampling.schedulers import SamplerOptions, full_sigmas, prepare_sampler  # noqa: E402


CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
# engine algorithm → k-diffusion function (A1111 `samplers_k_diffusion`)
KDIFFUSION = {
    "euler": "sample_euler", "euler_ancestral": "sample_euler_ancestral", "heun": "sample_heun",
    "dpm_2": "sample_dpm_2", "dpm_2_ancestral": "sample_dpm_2_ancestral", "lms": "sample_lms",
    "dpmpp_2s_ancestral": "sample_dpmpp_2s_ancestral", "dpmpp_sde": "sample_dpmpp_sde",
    "dpmpp_2m": "sample_dpmpp_2m", "dpmpp_2m_sde": "sample_dpmpp_2m_sde", "dpmpp_2m_sde_heun": "sample_dpmpp_2m_sde",
    "dpmpp_3m_sde": "sample_dpmpp_3m_sde", "dpm_fast": "sample_dpm_fast", "dpm_adaptive": "sample_dpm_adaptive",
}


def import_kdiffusion():
    """k-diffusion's sampling/external modules without its package __init__ (which needs training extras)."""
    if "k_diffusion.sampling" not in sys.modules:
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(importlib.util.find_spec("k_diffusion").submodule_search_locations)
        sys.modules["k_diffusion"] = package
    return importlib.import_module("k_diffusion.sampling"), importlib.import_module("k_diffusion.external")


KS, KEXT = import_kdiffusion()


class FreeEps:
    """A zero-cost ε model behind k-diffusion's `CompVisDenoiser`, as A1111 wraps the UNet."""

    def __init__(self, alphas_cumprod):
        self.alphas_cumprod = alphas_cumprod

    def apply_model(self, x, t, cond=None):
        return x * 0.5


class PerImageTorch:
    """A1111 `TorchHijack`: k-diffusion's `torch.randn_like` draws one tensor per image generator."""

    def __init__(self, generators):
        self.generators = generators

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn_like(self, x):
        return torch.stack([torch.randn(x.shape[1:], generator=g) for g in self.generators])


def run_engine(name: str, steps: int, shape, seeds) -> float:
    noise = ImageNoise(shape, seeds, source="CPU")
    initial = noise.first()
    started = time.process_time()
    sampler = prepare_sampler(resolve_sampler(name, None), steps_total=steps, steps_run=steps,
                              scheduler_config=CONFIG, seeds=seeds, generators=noise.generators,
                              options=SamplerOptions(randn_source="CPU"), device=torch.device("cpu"))
    denoise(sampler, initial * sampler.start_sigma, lambda x_in, t, i: x_in * 0.5)
    return time.process_time() - started


def run_kdiffusion(name: str, steps: int, shape, seeds, denoiser) -> float:
    row = resolve_sampler(name, None)
    noise = ImageNoise(shape, seeds, source="CPU")
    initial = noise.first()
    algorithm = row.definition.algorithm
    function = getattr(KS, KDIFFUSION[algorithm])
    started = time.process_time()
    sigmas = full_sigmas(row, steps, _discrete(), SamplerOptions())
    x = initial * sigmas[0]
    kwargs = {}
    if row.brownian_noise:
        positive = sigmas[sigmas > 0]
        kwargs["noise_sampler"] = KS.BrownianTreeNoiseSampler(x, positive.min(), sigmas.max(), seed=list(seeds))
    if algorithm == "dpmpp_2m_sde_heun":
        kwargs["solver_type"] = "heun"
    KS.torch = PerImageTorch(noise.generators)
    try:
        if algorithm == "dpm_fast":
            function(denoiser, x, denoiser.sigmas[0], denoiser.sigmas[-1], steps, disable=True)
        elif algorithm == "dpm_adaptive":
            function(denoiser, x, denoiser.sigmas[0], denoiser.sigmas[-1], disable=True)
        else:
            function(denoiser, x, sigmas, disable=True, **kwargs)
    finally:
        KS.torch = torch
    return time.process_time() - started


def _discrete():
    from engine.sampling.model_schedule import DiscreteSigmas

    return DiscreteSigmas(alphas_cumprod_from_config(CONFIG))


def model_calls(name: str, steps: int, shape, seeds) -> int:
    calls = []
    noise = ImageNoise(shape, seeds, source="CPU")
    initial = noise.first()
    sampler = prepare_sampler(resolve_sampler(name, None), steps_total=steps, steps_run=steps,
                              scheduler_config=CONFIG, seeds=seeds, generators=noise.generators,
                              options=SamplerOptions(randn_source="CPU"), device=torch.device("cpu"))
    denoise(sampler, initial * sampler.start_sigma, lambda x_in, t, i: calls.append(i) or x_in * 0.5)
    return len(calls)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=64, help="latent side (64 = a 512² image)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--only", action="append", help="sampler name (repeatable)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    shape, seeds = (4, args.size, args.size), [1000 + i for i in range(args.batch)]
    denoiser = KEXT.CompVisDenoiser(FreeEps(alphas_cumprod_from_config(CONFIG)))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, 1 torch thread, torch {torch.__version__}, "
          f"python {platform.python_version()}, load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"\nZero-cost ε model, latents {args.batch}×{shape}, {args.steps} steps, medians of {args.runs} "
          "alternating runs, CPU time (preparation included on both sides).\n")
    print("| sampler | model calls | engine ms/call | k-diffusion ms/call | engine ÷ k-diffusion |\n|---|---|---|---|---|")
    for row in SAMPLERS:
        if row.unsupported or (args.only and row.name not in args.only):
            continue
        calls = model_calls(row.name, args.steps, shape, seeds)
        has_reference = row.algorithm in KDIFFUSION
        run_engine(row.name, args.steps, shape, seeds)
        if has_reference:
            run_kdiffusion(row.name, args.steps, shape, seeds, denoiser)
        ours, theirs = [], []
        for _ in range(args.runs):
            ours.append(run_engine(row.name, args.steps, shape, seeds))
            if has_reference:
                theirs.append(run_kdiffusion(row.name, args.steps, shape, seeds, denoiser))
        engine_ms = 1000 * statistics.median(ours) / calls
        if has_reference:
            kd_ms = 1000 * statistics.median(theirs) / calls
            print(f"| {row.name} | {calls} | {engine_ms:.3f} | {kd_ms:.3f} | {engine_ms / kd_ms:.2f} |")
        else:
            print(f"| {row.name} | {calls} | {engine_ms:.3f} | (A1111 code, no k-diffusion function) | |")
    print(f"\nload average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
