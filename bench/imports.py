"""Import time of the worker against the diffusers floor (issue 13, item 1).

Fresh interpreters, alternated: one runs `import handler`, the other `import torch, diffusers` and
`from diffusers import StableDiffusionPipeline` (what any diffusers worker must import). Each reports the
wall and CPU seconds of its import and the modules it loaded; medians of `--repeats` pairs are compared.
Goal: handler ÷ diffusers ≤ 1.1. The first pair warms the page cache and is not counted (`--discard`).

    python bench/imports.py [--repeats 5] [--discard 1]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
GOAL = 1.1
STATEMENTS = {
    "diffusers": "import torch, diffusers\nfrom diffusers import StableDiffusionPipeline",
    "handler": "import handler",
}
PROBE = """
import json, sys, time
wall, cpu = time.perf_counter(), time.process_time()
{statement}
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({{"wall": wall, "cpu": cpu, "modules": len(sys.modules),
                   "top": sorted({{m.split(".")[0] for m in sys.modules}})}}))
"""


def measure(statement: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(statement=statement)],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine_line() -> str:
    import diffusers
    import torch

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, python {platform.python_version()}, "
        f"load average {load}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--discard", type=int, default=1, help="leading pairs that only warm the page cache")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in STATEMENTS}
    for index in range(args.discard + args.repeats):
        for name, statement in STATEMENTS.items():
            run = measure(statement)
            if index >= args.discard:
                runs[name].append(run)
    print(machine_line())
    print(f"\nFresh interpreters, alternated; medians of {args.repeats} (after {args.discard} discarded), "
          "OMP_NUM_THREADS=1, warm page cache.\n")
    print("| import | wall s | CPU s | modules |")
    print("|---|---|---|---|")
    median = {}
    for name, statement in STATEMENTS.items():
        wall = statistics.median(run["wall"] for run in runs[name])
        cpu = statistics.median(run["cpu"] for run in runs[name])
        median[name] = (wall, cpu)
        print(f"| `{statement.replace(chr(10), '; ')}` | {wall:.2f} | {cpu:.2f} | {runs[name][-1]['modules']} |")
    wall_ratio = median["handler"][0] / median["diffusers"][0]
    cpu_ratio = median["handler"][1] / median["diffusers"][1]
    print(f"\nhandler ÷ diffusers: wall **{wall_ratio:.3f}**, CPU **{cpu_ratio:.3f}** (goal ≤ {GOAL})")
    extra = sorted(set(runs["handler"][-1]["top"]) - set(runs["diffusers"][-1]["top"]))
    print(f"top-level packages only the handler loads: {', '.join(extra)}")


if __name__ == "__main__":
    main()
