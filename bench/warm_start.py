"""Does start-up warm-up make the first request as fast as the second? (issue 7, item 3)

Runs two fresh processes on the tiny demo models (or `--models`): one warms up the way the RunPod worker and
`python -m engine serve` do (`engine.wire.routes.warm_up`: load the default checkpoint, generate one tiny
image), one does not. Each then times the same request twice. Target: first / second <= 1.5 with warm-up.
Each kind of process runs `--repeats` times and the medians are printed (a shared CPU makes runs noisy).

    python bench/warm_start.py [--models DIR] [--device cpu] [--repeats 3]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
# A typical request, deliberately unlike the warm-up one (other size, sampler, schedule, step count).
REQUEST = {
    "prompt": "a (watercolor:1.2) fox in the snow",
    "negative_prompt": "blurry",
    "seed": 42,
    "steps": 6,
    "width": 96,
    "height": 64,
    "sampler_name": "DPM++ 2M",
    "scheduler": "karras",
    "cfg_scale": 6,
}
TARGET_RATIO = 1.5


def child(models: Path, device: str, warm: bool) -> dict:
    """Inside a fresh process: build the engine, optionally warm up, time the request twice."""
    sys.path.insert(0, str(REPO))
    import torch

    # One thread, and CPU time beside wall time: other processes on a shared machine barely move the numbers.
    torch.set_num_threads(1)
    from engine import Engine
    from engine.wire.routes import warm_up

    started = time.process_time()
    engine = Engine.from_models_dir(models, device=device)
    if warm:
        warm_up(engine)
    result = {"warm_up": warm, "start_up_s": time.process_time() - started}
    for name in ("first", "second"):
        wall, cpu = time.perf_counter(), time.process_time()
        engine.handle("POST", "sdapi/v1/txt2img", dict(REQUEST))
        result[f"{name}_s"], result[f"{name}_wall_s"] = time.process_time() - cpu, time.perf_counter() - wall
    return result


def run(models: Path, device: str, warm: bool) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "warm" if warm else "cold",
        "--models",
        str(models),
        "--device",
        device,
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=Path, help="models folder (default: fresh tiny demo models)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per variant (default: 3)")
    parser.add_argument("--child", choices=("warm", "cold"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.models, args.device, args.child == "warm")))
        return
    with tempfile.TemporaryDirectory() as scratch:
        models = args.models
        if models is None:
            sys.path.insert(0, str(REPO))
            from engine.demo.models import write_demo_models

            models = Path(scratch)
            write_demo_models(models)
        print(f"request: {json.dumps(REQUEST)}")
        for warm in (True, False):
            results = [run(models, args.device, warm) for _ in range(args.repeats)]
            median = {
                key: statistics.median(r[key] for r in results) for key in results[0] if key.endswith("_s")
            }
            ratio = statistics.median(r["first_s"] / r["second_s"] for r in results)
            verdict = ("meets" if ratio <= TARGET_RATIO else "misses") + f" the {TARGET_RATIO}x target"
            print(
                f"{'with' if warm else 'without'} warm-up (medians of {args.repeats}, CPU time): start-up "
                f"{median['start_up_s']:.2f} s, first request {median['first_s']:.2f} s, second "
                f"{median['second_s']:.2f} s, first/second {ratio:.2f}"
                + (f" ({verdict})" if warm else "")
                + f"; wall time {median['first_wall_s']:.2f} s / {median['second_wall_s']:.2f} s"
            )


if __name__ == "__main__":
    main()
