"""DeepCache step caching (`DEEPCACHE_INTERVAL`) against the plain UNet, side by side in one run.

    python bench/step_cache.py [--runs 3] [--interval 3] [--branch 0] [--latent 32] [--calls 6] [--no-full-size]

1. Released SD1.5 UNet architecture (`engine.demo.full_size`, random weights, fp32): the time of one full UNet
   call and of one cached (shallow) call on a CFG batch of 2 at a `--latent`² latent (also at deeper branches
   3, 6, 9), then `--calls` guided calls of one pass with and without the cache (first call full).
2. The whole engine on the tiny demo SD1.5 (txt2img, 64×64, Euler, 12 steps): wall time per request with and
   without, and the mean absolute pixel difference of the cached image from the plain one (0–255).

Timings are medians of process CPU time with one torch thread, alternating both sides run by run (the shared
machine's load disturbs CPU time far less than wall time). Random weights say nothing about image quality:
the pixel difference only shows the change is moderate, not what a trained model would look like.
"""

import argparse
import statistics
import time

import harness
import numpy as np
import torch

from engine.demo.full_size import UNET_CONFIGS
from engine.sampling.guidance import GuidedUNet, StepConditioning, constant
from engine.sampling.step_cache import ShallowPath, StepCache
from engine.speedups import SpeedUps, StepCaching


def _median_cpu(run, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return statistics.median(times)


@torch.no_grad()
def full_size_unet(args) -> None:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIGS["sd15"]).eval()
    x = torch.randn(2, 4, args.latent, args.latent)
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    t = torch.tensor(500.0)
    path = ShallowPath(unet, args.branch)
    _, deep = path.full(x, t, context, {})
    full = _median_cpu(lambda: unet(x, t, encoder_hidden_states=context), args.runs)
    shallow = _median_cpu(lambda: path.shallow(x, t, context, {}, deep), args.runs)
    print(f"SD1.5 UNet, latent {args.latent}x{args.latent}, batch 2, branch {args.branch}: full call {full:.3f} s, "
          f"cached call {shallow:.3f} s ({full / shallow:.1f}x)")
    for branch in (3, 6, 9):  # deeper branches: more of the UNet runs on cached calls, fresher features
        deeper = ShallowPath(unet, branch)
        _, feature = deeper.full(x, t, context, {})
        cost = _median_cpu(lambda: deeper.shallow(x, t, context, {}, feature), args.runs)  # noqa: B023
        print(f"  cached call at branch {branch}: {cost:.3f} s ({full / cost:.1f}x)")

    conditioning = constant(StepConditioning(cond=context[:1], uncond=context[1:]))

    def one_pass(step_cache):
        guided = GuidedUNet(unet, 7.0, conditioning, step_cache=step_cache)
        for call in range(args.calls):
            guided(x[:1], t - 50 * call, call)

    caching = StepCaching(args.interval, args.branch)
    times = {"plain": [], "cached": []}
    for _ in range(args.runs):
        times["plain"].append(_median_cpu(lambda: one_pass(None), 1))
        times["cached"].append(_median_cpu(lambda: one_pass(StepCache(unet, caching)), 1))
    plain, cached = (statistics.median(times[key]) for key in ("plain", "cached"))
    print(f"  {args.calls} guided calls: plain {plain:.2f} s ({plain / args.calls:.3f} s/call), interval "
          f"{args.interval}: {cached:.2f} s ({cached / args.calls:.3f} s/call), {plain / cached:.2f}x")


def tiny_engine(args) -> None:
    from engine import Engine

    models = harness.demo_models(None)
    engines = {
        "plain": Engine.from_models_dir(models, device="cpu", default_checkpoint="tiny-sd15"),
        "cached": Engine.from_models_dir(models, device="cpu", default_checkpoint="tiny-sd15",
                                         speedups=SpeedUps(deepcache_interval=args.interval,
                                                           deepcache_branch=args.branch)),
    }
    payload = {"prompt": "a watercolor painting of a fox", "negative_prompt": "blurry", "seed": 42, "steps": 12,
               "width": 64, "height": 64, "sampler_name": "Euler"}
    images = {name: engine.txt2img(payload).images[0] for name, engine in engines.items()}  # warm-up
    times = {name: [] for name in engines}
    for _ in range(args.runs):
        for name, engine in engines.items():
            started = time.process_time()
            engine.txt2img(payload)
            times[name].append(time.process_time() - started)
    plain, cached = (statistics.median(times[name]) for name in engines)
    difference = np.abs(np.asarray(images["cached"], np.float32) - np.asarray(images["plain"], np.float32)).mean()
    print(f"tiny SD1.5 engine, 64x64, 12 Euler steps: plain {plain:.3f} s, interval {args.interval}: "
          f"{cached:.3f} s ({plain / cached:.2f}x); mean |pixel difference| {difference:.2f} / 255")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interval", type=int, default=3)
    parser.add_argument("--branch", type=int, default=0)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--no-full-size", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(harness.machine_line())
    tiny_engine(args)
    if not args.no_full_size:
        full_size_unet(args)


if __name__ == "__main__":
    main()
