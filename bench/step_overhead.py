"""Per-step time of the engine vs a bare diffusers pipeline on the same work, side by side in one run.

    python bench/step_overhead.py [--runs 5] [--steps 8 16] [--size 64]

Tiny SD1.5 demo components, DPM++ 2M Karras (diffusers' DPMSolverMultistepScheduler set up for A1111's
sigmas), CFG 7, one image. A step's time is the slope between two step counts, (T(n2) − T(n1)) / (n2 − n1):
what the request costs per step once prompt encoding, noise and the VAE decode (the same at any step count)
are taken out. The tiny UNet is fast, so host work between UNet calls (guidance, prompt-schedule lookups,
callbacks, interrupt checks, the sampler) shows up here as it would beside fast GPU kernels. Both sides
alternate run by run; medians of process CPU time (one torch thread), which the shared machine's load disturbs
far less than wall time.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline  # noqa: E402

from engine.demo.tiny import tiny_components  # noqa: E402
from engine.generate import Models, generate  # noqa: E402
from engine.pipeline import A1111Pipeline  # noqa: E402
from engine.settings import Settings  # noqa: E402
from engine.translate import to_plan  # noqa: E402
from engine.wire.txt2img import Txt2ImgRequest  # noqa: E402


SEED = 42


def payload(size: int, steps: int) -> dict:
    return {"prompt": "a watercolor painting of a fox", "negative_prompt": "blurry", "seed": SEED, "steps": steps,
            "cfg_scale": 7, "width": size, "height": size, "sampler_name": "DPM++ 2M", "scheduler": "karras"}


def engine_runner(components: dict):
    pipe = A1111Pipeline(**{k: components.get(k) for k in A1111Pipeline._get_signature_keys(A1111Pipeline)[0]})
    models = Models(pipe)

    def run(request: dict) -> float:
        plan = to_plan(Txt2ImgRequest.parse(request), Settings())
        started = time.process_time()
        generate(plan, models)
        return time.process_time() - started

    return run


def diffusers_runner(components: dict):
    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        components["scheduler"].config, use_karras_sigmas=True, timestep_spacing="linspace",
        algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero", lower_order_final=True,
    )
    pipe.set_progress_bar_config(disable=True)

    def run(request: dict) -> float:
        size = request["height"]
        latents = torch.randn((1, 4, size // 8, size // 8), generator=torch.Generator().manual_seed(SEED))
        started = time.process_time()
        pipe(prompt=request["prompt"], negative_prompt=request["negative_prompt"],
             num_inference_steps=request["steps"], guidance_scale=request["cfg_scale"], height=size, width=size,
             latents=latents, output_type="pil")
        return time.process_time() - started

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, nargs=2, default=[8, 16])
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    components = tiny_components("sd15")
    runners = {"engine": engine_runner(components), "diffusers": diffusers_runner(components)}
    low, high = args.steps
    times = {(side, n): [] for side in runners for n in (low, high)}
    for run in runners.values():  # warm-up
        run(payload(args.size, low))
    with torch.inference_mode():
        for _ in range(args.runs):
            for n in (low, high):
                for side, run in runners.items():
                    times[side, n].append(run(payload(args.size, n)))
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, 1 torch thread, torch {torch.__version__}, "
          f"python {platform.python_version()}, load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print(f"Tiny SD1.5, {args.size}², DPM++ 2M Karras, CFG 7, CPU seconds, medians of {args.runs} alternating runs.\n")
    print(f"| side | {low} steps s | {high} steps s | per step ms |\n|---|---|---|---|")
    per_step = {}
    for side in runners:
        per_step[side] = (median[side, high] - median[side, low]) / (high - low)
        print(f"| {side} | {median[side, low]:.3f} | {median[side, high]:.3f} | {1000 * per_step[side]:.2f} |")
    print(f"\nengine ÷ diffusers per step: {per_step['engine'] / per_step['diffusers']:.3f}; whole request at "
          f"{low} steps: {median['engine', low] / median['diffusers', low]:.3f}")
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
