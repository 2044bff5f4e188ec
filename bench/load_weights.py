"""Full-size checkpoint load against a plain read of the same file (issue 13, item 2).

Writes full-size SD1.5 and SDXL single files (random fp16 weights at the released shapes,
`engine.demo.full_size`) into a temporary folder, then in fresh subprocesses, alternated:

- read: the file read fully into a 64 MB buffer (`readinto`, unbuffered): every byte crosses into the process;
- load: `engine.resources.loader.load_pipeline` at fp16 on the CPU (the GPU's dtype; the CPU default is fp32),
  then every weight's bytes copied once into a scratch buffer, as `.to("cuda")` copies them to the device.
  safetensors maps the file, so without that pass the weights would not even have been read;
- diffusers: the same with a stock diffusers worker's call, `<Pipeline>.from_single_file(path, config=...,
  torch_dtype=float16)`, for comparison.

Each child reports wall and CPU seconds, the rise of its peak resident memory (`ru_maxrss`) above the
imports, and, for the load, how many random-initialisation ops ran on real (non-meta) tensors (counted with a
dispatch mode) and the dtypes of the loaded models. Goals: load ÷ read ≤ 1.3, peak rise ÷ file ≤ 1.2.

Two page-cache conditions: warm (the file was just written or read) and cold, where the file's pages are
dropped from the page cache before each child with `posix_fadvise(POSIX_FADV_DONTNEED)` (no root needed, and
no other process's cache is touched), so both children read from the disk.

    python bench/load_weights.py [--families sd15 sdxl] [--repeats 2] [--folder DIR]
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GOAL_TIME, GOAL_MEMORY = 1.3, 1.2
BUFFER = 64 << 20
RANDOM_INIT_OPS = ("normal_", "uniform_", "trunc_normal_", "bernoulli_", "random_", "exponential_")


def child_read(path: Path) -> dict:
    with path.open("rb", buffering=0) as file:
        view, total = memoryview(bytearray(BUFFER)), 0
        while count := file.readinto(view):
            total += count
    return {"bytes": total}


def child_load(path: Path, stock: bool = False) -> dict:
    import diffusers
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from engine.resources.loader import (
        PIPELINE_CLASS_NAMES,
        Precision,
        detect_family,
        find_config_folder,
        load_pipeline,
    )

    class RandomInitCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            tensor = args[0] if args else None
            name = func.overloadpacket.__name__
            if name in RANDOM_INIT_OPS and isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                self.count += 1
            return func(*args, **(kwargs or {}))

    counter = RandomInitCounter()
    roots = [path.parents[1] / "configs"]
    with counter:
        if stock:
            family = detect_family(path)
            pipeline = getattr(diffusers, PIPELINE_CLASS_NAMES[family]).from_single_file(
                str(path), config=str(find_config_folder(path, family, roots)), torch_dtype=torch.float16,
                local_files_only=True)
        else:
            pipeline = load_pipeline(path, roots, Precision(torch.device("cpu"), torch.float16))
    loaded = time.perf_counter()
    # Read every weight once, as a copy to the GPU would: the pages of the mapped file come in here.
    largest = max(t.numel() * t.element_size() for m in _models(pipeline) for t in _tensors(m))
    scratch = torch.empty(largest, dtype=torch.uint8)
    copied = 0
    for model in _models(pipeline):
        for tensor in _tensors(model):
            data = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
            scratch[: data.numel()].copy_(data)
            copied += data.numel()
    dtypes = {name: sorted({str(t.dtype) for t in _tensors(getattr(pipeline, name))})
              for name in ("unet", "vae", "text_encoder", "text_encoder_2") if getattr(pipeline, name, None)}
    return {"random_init_ops": counter.count, "weight_bytes": copied, "dtypes": dtypes,
            "touch_s": time.perf_counter() - loaded}


def _models(pipeline):
    return [m for m in (getattr(pipeline, n, None) for n in ("unet", "vae", "text_encoder", "text_encoder_2")) if m]


def _tensors(model):
    return [*model.parameters(), *model.buffers()]


def child(kind: str, path: Path) -> None:
    import diffusers  # noqa: F401  (imports are not part of either measurement)
    import torch
    import transformers  # noqa: F401

    from engine.resources.loader import PIPELINE_CLASS_NAMES

    # The pipeline classes' modules too: diffusers imports them lazily, and import time is bench/imports.py's.
    for name in PIPELINE_CLASS_NAMES.values():
        getattr(diffusers, name)
    torch.set_num_threads(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    wall, cpu = time.perf_counter(), time.process_time()
    result = child_read(path) if kind == "read" else child_load(path, stock=kind == "diffusers")
    result.update(wall=time.perf_counter() - wall, cpu=time.process_time() - cpu,
                  rise=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, base=before)
    print(json.dumps(result))


def drop_file_cache(path: Path) -> None:
    """Evict this one file's clean pages from the page cache."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def run(kind: str, path: Path, cold: bool) -> dict:
    if cold:
        drop_file_cache(path)
    else:
        child_read(path)  # make sure every page is cached
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    output = subprocess.run([sys.executable, __file__, "--child", kind, str(path)], env=env, check=True,
                            capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def machine_line() -> str:
    import diffusers
    import safetensors
    import torch

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"diffusers {diffusers.__version__}, safetensors {safetensors.__version__}, "
            f"python {platform.python_version()}, load average {load}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["sd15", "sdxl"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--folder", type=Path, help="keep the checkpoints here (reused when present)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    with tempfile.TemporaryDirectory(prefix="full-size-") as temporary:
        folder = args.folder or Path(temporary)
        rows = []
        for family in args.families:
            path = folder / "Stable-diffusion" / f"full-{family}.safetensors"
            if not path.exists():
                from engine.demo.full_size import write_full_size_checkpoint

                write_full_size_checkpoint(family, f"full-{family}", folder)
            for cold in (False, True):
                runs = {"read": [], "load": [], "diffusers": []}
                for _ in range(args.repeats):
                    for kind in runs:
                        runs[kind].append(run(kind, path, cold))
                rows.append((family, path.stat().st_size, cold, runs))
        print(machine_line())
        print(f"\nFresh subprocesses, alternated, medians of {args.repeats}; load at fp16 on the CPU, then every "
              "weight copied once.\n")
        print("| checkpoint | page cache | read s (CPU) | load + copy s (CPU) | of which copy s | load ÷ read | "
              "peak rise ÷ file: read, load | random-init ops | dtypes | stock diffusers + copy s (CPU) ÷ read |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for family, size, cold, runs in rows:
            def median(kind, key, runs=runs):
                return statistics.median(run[key] for run in runs[kind])

            load = runs["load"][-1]
            print(f"| {family} ({size / 1e9:.2f} GB) | {'cold' if cold else 'warm'} | "
                  f"{median('read', 'wall'):.2f} ({median('read', 'cpu'):.2f}) | "
                  f"{median('load', 'wall'):.2f} ({median('load', 'cpu'):.2f}) | {median('load', 'touch_s'):.2f} | "
                  f"**{median('load', 'wall') / median('read', 'wall'):.2f}** | "
                  f"{median('read', 'rise') / size:.2f}, **{median('load', 'rise') / size:.2f}** | "
                  f"{load['random_init_ops']} | {json.dumps(load['dtypes'])} | "
                  f"{median('diffusers', 'wall'):.2f} ({median('diffusers', 'cpu'):.2f}) "
                  f"{median('diffusers', 'wall') / median('read', 'wall'):.2f} |")
        print(f"\nGoals: load ÷ read ≤ {GOAL_TIME}; peak resident rise ÷ file ≤ {GOAL_MEMORY}.")


if __name__ == "__main__":
    main()
