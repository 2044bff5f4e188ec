"""UNet calls before and after the refiner switch, against A1111's formula (issue 11, item 1).

    python bench/refiner_switch.py [--runs 3] [--size 64] [--threads 1]

The tiny SDXL demo model runs txt2img with `refiner_checkpoint: tiny-sdxl_refiner` for several samplers, step
counts and `refiner_switch_at` values. Forward pre-hooks on the two real UNet modules count which checkpoint
ran each model call. A1111's count (`sd_samplers_common.apply_refiner`): the refiner takes over at the first
call whose progress (999 − argmin |σ_model − σ|) / 1000 reaches switch_at, σ being the level the sampler
passes to the denoiser; with `refiner_switch_by_sample_steps` the progress is calls / counted steps (steps,
× 2 for second-order samplers). The σ sequence is k-diffusion's own (its samplers and schedule functions,
run with a recording denoiser), not the engine's. For DDIM (not a k-diffusion sampler) the formula is applied
to the timesteps the UNet received. Times: the refined request ÷ the same request without a refiner (wall).
"""

import argparse
import importlib
import importlib.util
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine import Engine  # noqa: E402
from engine.demo.models import write_demo_models  # noqa: E402


REFINER = "tiny-sdxl_refiner"
# (sampler, scheduler, steps, switch_at, by sampling steps)
CASES = (
    ("Euler", None, 20, 0.8, False),
    ("Euler", None, 20, 0.5, False),
    ("DPM++ 2M", "Karras", 20, 0.8, False),
    ("DPM++ SDE", "Karras", 10, 0.8, False),
    ("DDIM", None, 20, 0.8, False),
    ("DPM++ SDE", "Karras", 10, 0.8, True),
)
KDIFFUSION_SAMPLERS = {"Euler": "sample_euler", "DPM++ 2M": "sample_dpmpp_2m", "DPM++ SDE": "sample_dpmpp_sde"}
SECOND_ORDER = {"DPM++ SDE"}


def import_kdiffusion():
    """k-diffusion's sampling/external modules without its heavy package __init__ (as the tests import it)."""
    if "k_diffusion.sampling" not in sys.modules:
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(importlib.util.find_spec("k_diffusion").submodule_search_locations)
        sys.modules["k_diffusion"] = package
    return importlib.import_module("k_diffusion.sampling"), importlib.import_module("k_diffusion.external")


def model_sigmas() -> torch.Tensor:
    """A1111's σ table: ᾱ from the scaled-linear betas built in float64, stored as float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0).to(torch.float32)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def kdiffusion_levels(sampler: str, scheduler: str | None, steps: int) -> list[float]:
    sampling, external = import_kdiffusion()
    schedule = external.DiscreteSchedule(model_sigmas(), quantize=False)
    if scheduler == "Karras":
        sigmas = sampling.get_sigmas_karras(steps, schedule.sigma_min.item(), schedule.sigma_max.item(), rho=7.0)
    else:
        sigmas = schedule.get_sigmas(steps)
    seen = []

    def denoiser(x, sigma, **kwargs):
        seen.append(float(sigma.max()))
        return torch.zeros_like(x)

    getattr(sampling, KDIFFUSION_SAMPLERS[sampler])(denoiser, torch.zeros(1, 4, 8, 8), sigmas, disable=True)
    return seen


def a1111_split(progress: list[float], switch_at: float) -> tuple[int, int]:
    switch = next((call for call, value in enumerate(progress) if value >= switch_at), len(progress))
    return switch, len(progress) - switch


def expected(case, observed_timesteps: list[float]) -> tuple[int, int]:
    sampler, scheduler, steps, switch_at, by_steps = case
    if by_steps:
        counted = steps * (2 if sampler in SECOND_ORDER else 1)
        calls = len(observed_timesteps)
        return a1111_split([call / counted for call in range(calls)], switch_at)
    if sampler in KDIFFUSION_SAMPLERS:
        table = model_sigmas()
        levels = kdiffusion_levels(sampler, scheduler, steps)
        timesteps = [int(torch.argmin((table - sigma).abs())) for sigma in levels]
    else:
        timesteps = [int(t) for t in observed_timesteps]
    return a1111_split([(999 - t) / 1000 for t in timesteps], switch_at)


def payload(case, size: int, refined: bool) -> dict:
    sampler, scheduler, steps, switch_at, by_steps = case
    body = {"prompt": "a red fox in the snow", "negative_prompt": "blurry", "seed": 1234, "cfg_scale": 5,
            "width": size, "height": size, "sampler_name": sampler, "scheduler": scheduler, "steps": steps}
    if refined:
        body.update(refiner_checkpoint=REFINER, refiner_switch_at=switch_at,
                    override_settings={"refiner_switch_by_sample_steps": by_steps})
    return body


def measure(engine, case, size: int, runs: int):
    base = engine.pipelines.get(engine.catalog.find_checkpoint("tiny-sdxl")).unet
    refiner = engine.pipelines.get(engine.catalog.find_checkpoint(REFINER)).unet
    calls: list[tuple[str, float]] = []
    handles = [
        unet.register_forward_pre_hook(lambda module, args, name=name: calls.append((name, float(args[1].max()))))
        for name, unet in (("base", base), ("refiner", refiner))
    ]
    times = {True: [], False: []}
    try:
        for _ in range(runs):
            for refined in (False, True):
                calls.clear()
                started = time.perf_counter()
                engine.txt2img(payload(case, size, refined))
                times[refined].append(time.perf_counter() - started)
                if refined:
                    recorded = list(calls)
    finally:
        for handle in handles:
            handle.remove()
    names = [name for name, _ in recorded]
    measured = (names.count("base"), names.count("refiner"))
    return measured, [t for _, t in recorded], statistics.median(times[True]) / statistics.median(times[False])


def machine_line() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
            f"python {platform.python_version()}, load average {load}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        write_demo_models(Path(folder))
        engine = Engine.from_models_dir(folder, device="cpu", default_checkpoint="tiny-sdxl")
        engine.txt2img(payload(CASES[0], args.size, True))  # warm-up: both checkpoints loaded
        print(machine_line())
        print(f"\ntiny SDXL + tiny refiner at {args.size}×{args.size}, CFG 5; medians of {args.runs} runs\n")
        print("| sampler | steps | switch at | A1111 calls (base + refiner) | measured (base + refiner) | match "
              "| time ÷ no refiner |")
        print("|---|---|---|---|---|---|---|")
        for case in CASES:
            measured, timesteps, ratio = measure(engine, case, args.size, args.runs)
            want = expected(case, timesteps)
            sampler, scheduler, steps, switch_at, by_steps = case
            label = f"{sampler}{' ' + scheduler if scheduler else ''}"
            switch = f"{switch_at}{' (by sampling steps)' if by_steps else ''}"
            print(f"| {label} | {steps} | {switch} | {want[0]} + {want[1]} | {measured[0]} + {measured[1]} | "
                  f"{'yes' if want == measured else 'NO'} | {ratio:.3f} |")
            assert math.isfinite(ratio)


if __name__ == "__main__":
    main()
