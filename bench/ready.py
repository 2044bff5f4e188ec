"""Process start → first job answered, as a RunPod worker lives it (issue 13, item 3).

Each case starts a fresh Python process that does what `python handler.py` does before and after
`runpod.serverless.start`: `import handler`, optionally `handler.warm_up()` (default checkpoint loaded, one
tiny image generated), then answers one job through `handler.handler` (the same call the SDK makes). The
parent stamps the time before spawning the process; the child reports, on the same wall clock, when the import
finished, when it was ready to take jobs and when the job's answer was returned.

Cases: the tiny demo SD1.5 and SDXL models (a 64×64, 4-step job) and full-size random-weight checkpoints
(`engine.demo.full_size`, a 64×64, 1-step job, fp32 on the CPU as the engine runs there). A full-size SDXL
run needs ≈ 14 GB of fp32 weights on a CPU: it is only run when asked (`--cases ... full-sdxl`).

    python bench/ready.py [--cases demo-sd15 demo-sdxl full-sd15] [--repeats 1] [--full-folder DIR]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
DEMO_JOB = {"prompt": "a fox in the snow", "negative_prompt": "blurry", "seed": 7, "steps": 4, "width": 64,
            "height": 64, "sampler_name": "DPM++ 2M", "scheduler": "karras", "cfg_scale": 6}
FULL_SIZE_JOB = {**DEMO_JOB, "steps": 1}
CASES = {
    "demo-sd15": ("demo", "tiny-sd15", DEMO_JOB),
    "demo-sdxl": ("demo", "tiny-sdxl", DEMO_JOB),
    "full-sd15": ("full", "full-sd15", FULL_SIZE_JOB),
    "full-sdxl": ("full", "full-sdxl", FULL_SIZE_JOB),
}


def child(spawned: float, warm: bool, job: dict) -> None:
    """The worker's life up to its first answer; times are seconds since the parent spawned the process."""
    sys.path.insert(0, str(REPO))
    import handler

    imported = time.time()
    if warm:
        handler.warm_up()
    ready = time.time()
    output = handler.handler({"id": "bench", "input": {"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"},
                                                      "payload": job}})
    answered = time.time()
    if not isinstance(output, dict) or "error" in output or len(output.get("images", ())) != 1:
        raise SystemExit(f"the job failed: {str(output)[:300]}")
    print(json.dumps({"imported": imported - spawned, "ready": ready - spawned, "answered": answered - spawned}))


def run(models: Path, checkpoint: str, job: dict, warm: bool) -> dict:
    env = {**os.environ, "MODELS_DIR": str(models), "DEFAULT_CHECKPOINT": checkpoint, "DEVICE": "cpu",
           "OMP_NUM_THREADS": "1"}
    spawned = time.time()
    command = [sys.executable, __file__, "--child", json.dumps({"spawned": spawned, "warm": warm, "job": job})]
    done = subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine_line() -> str:
    import torch

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"OMP_NUM_THREADS=1, torch {torch.__version__}, python {platform.python_version()}, load average {load}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=tuple(CASES), default=["demo-sd15", "demo-sdxl", "full-sd15"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--full-folder", type=Path, help="keep the full-size checkpoints here (reused)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        child(spec["spawned"], spec["warm"], spec["job"])
        return
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="ready-") as scratch:
        demo, full = Path(scratch, "demo"), args.full_folder or Path(scratch, "full")
        rows = []
        for case in args.cases:
            kind, checkpoint, job = CASES[case]
            models = demo if kind == "demo" else full
            if kind == "demo" and not demo.exists():
                from engine.demo.models import write_demo_models

                write_demo_models(demo)
            if kind == "full" and not (full / "Stable-diffusion" / f"{checkpoint}.safetensors").exists():
                from engine.demo.full_size import write_full_size_checkpoint

                write_full_size_checkpoint(checkpoint.removeprefix("full-"), checkpoint, full)
            for warm in (True, False):
                runs = [run(models, checkpoint, job, warm) for _ in range(args.repeats)]
                rows.append((case, warm, {key: statistics.median(r[key] for r in runs) for key in runs[0]}))
        print(machine_line())
        print(f"\nWall seconds from spawning the process; medians of {args.repeats}. Jobs: demo "
              f"{json.dumps(DEMO_JOB)}; full-size the same with 1 step.\n")
        print("| checkpoint | warm-up | import handler | ready for jobs | first job answered | job itself |")
        print("|---|---|---|---|---|---|")
        for case, warm, times in rows:
            print(f"| {case} | {'yes' if warm else 'no'} | {times['imported']:.1f} | {times['ready']:.1f} | "
                  f"**{times['answered']:.1f}** | {times['answered'] - times['ready']:.1f} |")


if __name__ == "__main__":
    main()
