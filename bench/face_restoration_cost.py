"""Face restoration's work against A1111's count, and its cost next to the generation (issue 11 item 2).

    python bench/face_restoration_cost.py [--runs 3] [--size 128] [--steps 20] [--threads 2]

The tiny SD1.5 demo model generates a batch of two (Euler, `--steps`, `--size` square, seed 21) without face
restoration, with GFPGAN and with CodeFormer, alternately in one process. Forward hooks on the real networks
count what runs: the face detector (RetinaFace-ResNet50), the face parser (ParseNet, for the paste mask) and the
restorer. A1111's count (`face_restoration_utils.restore_with_face_helper`): one detector run per image, one
restorer and one parser run per detected face. A second request adds an ADetailer unit with `ad_restore_face`
(A1111: one more detector run per inpainted mask, and one restorer run per face found in it).

Costs are wall and process-CPU seconds, medians of `--runs` after a warm-up. On the demo models the generation
is tiny (a random-weight UNet a few channels wide) while the detector has RetinaFace's real size and the
CodeFormer file keeps the real VQGAN, so restoration dominates here; the per-call seconds, and those of the
released-size GFPGAN and CodeFormer networks (random weights, one call each on a 512 × 512 face), are what
carries over to real weights.
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine import Engine  # noqa: E402
from engine.demo.models import write_demo_models  # noqa: E402


SEED = 21
RESTORERS = ("GFPGAN", "CodeFormer")
UNIT = {"ad_model": "face_yolov8n.pt", "ad_confidence": 0.001, "ad_mask_k": 1, "ad_denoising_strength": 0.5,
        "ad_restore_face": True}


def machine_line() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s), "
            f"torch {torch.__version__}, python {platform.python_version()}, load average {load}")


class Timed:
    """Forward hooks on one network: calls and wall/CPU seconds since the last reset."""

    def __init__(self, module: torch.nn.Module):
        self.calls, self.wall, self.cpu = 0, 0.0, 0.0
        self._started = (0.0, 0.0)
        module.register_forward_pre_hook(lambda *_: self._start())
        module.register_forward_hook(lambda *_: self._stop())

    def _start(self):
        self._started = (time.perf_counter(), time.process_time())

    def _stop(self):
        self.calls += 1
        self.wall += time.perf_counter() - self._started[0]
        self.cpu += time.process_time() - self._started[1]

    def reset(self):
        self.calls, self.wall, self.cpu = 0, 0.0, 0.0

    def snapshot(self) -> dict:
        return {"calls": self.calls, "wall": self.wall, "cpu": self.cpu}


def payload(args, restorer: str | None, adetailer: bool = False) -> dict:
    body = {"prompt": "a portrait", "seed": SEED, "steps": args.steps, "width": args.size, "height": args.size,
            "sampler_name": "Euler", "batch_size": 2}
    if restorer:
        body.update(restore_faces=True, override_settings={"face_restoration_model": restorer})
    if adetailer:
        body["alwayson_scripts"] = {"ADetailer": {"args": [True, False, UNIT]}}
    return body


def run(engine, body: dict, hooks: dict[str, Timed]) -> dict:
    for hook in hooks.values():
        hook.reset()
    wall, cpu = time.perf_counter(), time.process_time()
    result = engine.txt2img(body)
    timing = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
              "restorer_calls": result.restorer_calls}
    return {**timing, **{name: hook.snapshot() for name, hook in hooks.items()}}


def measure(engine, args) -> dict:
    face_models = engine.restorers.get("GFPGAN").face_models
    hooks = {"detector": Timed(face_models.detector), "parser": Timed(face_models.parser),
             **{name: Timed(engine.restorers.get(name).net.model) for name in RESTORERS}}
    cases = {"none": payload(args, None), **{name: payload(args, name) for name in RESTORERS},
             "adetailer": payload(args, "GFPGAN", adetailer=True)}
    for body in cases.values():
        run(engine, body, hooks)  # warm-up: loads every network
    results = {name: [] for name in cases}
    for _ in range(args.runs):
        for name, body in cases.items():
            results[name].append(run(engine, body, hooks))
    return results


def released_seconds() -> dict:
    """One call of each released-size network on a 512 × 512 face (random weights), wall and CPU seconds."""
    from spandrel.architectures.GFPGAN import GFPGAN
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    face = torch.rand(1, 3, 512, 512) * 2 - 1
    calls = {"GFPGAN": (GFPGAN().eval(), {"return_rgb": False}),
             "CodeFormer": (CodeFormer().eval(), {"weight": 0.5, "adain": True})}
    seconds = {}
    with torch.no_grad():
        for name, (net, kwargs) in calls.items():
            wall, cpu = time.perf_counter(), time.process_time()
            net(face, **kwargs)
            seconds[name] = (time.perf_counter() - wall, time.process_time() - cpu)
    return seconds


def med(runs: list[dict], *keys: str) -> float:
    values = []
    for value in runs:
        for key in keys:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def report(results: dict, released: dict, args) -> None:
    print(f"\nTiny SD1.5, batch of 2 at {args.size}×{args.size}, Euler {args.steps} steps, seed {SEED}; "
          f"medians of {args.runs} runs after a warm-up.\n")
    print("| request | images | detector runs | faces restored | restorer calls | parser runs "
          "| A1111: detector / restorer / parser |")
    print("|---|---|---|---|---|---|---|")
    for name in (*RESTORERS, "adetailer"):
        last = results[name][-1]
        restorer = "GFPGAN" if name == "adetailer" else name
        faces = last["restorer_calls"]
        label = "GFPGAN + ADetailer (ad_restore_face)" if name == "adetailer" else name
        detector_expected = "2 + 2 masks" if name == "adetailer" else "2"
        print(f"| {label} | 2 | {last['detector']['calls']} | {faces} | {last[restorer]['calls']} | "
              f"{last['parser']['calls']} | {detector_expected} / {faces} / {faces} |")
    base = {clock: med(results["none"], clock) for clock in ("wall", "cpu")}
    print("\n| request | wall s | CPU s | ÷ without restoration (CPU) | detector CPU s | restorer CPU s "
          "| per face: restorer CPU s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| without restoration | {base['wall']:.2f} | {base['cpu']:.2f} | 1.00 | | | |")
    for name in RESTORERS:
        runs = results[name]
        cpu, faces = med(runs, "cpu"), runs[-1]["restorer_calls"]
        restorer_cpu = med(runs, name, "cpu")
        print(f"| {name} | {med(runs, 'wall'):.2f} | {cpu:.2f} | {cpu / base['cpu']:.2f} | "
              f"{med(runs, 'detector', 'cpu'):.2f} | {restorer_cpu:.2f} | {restorer_cpu / max(faces, 1):.2f} |")
    print("\n| released-size network, one 512×512 face | wall s | CPU s |\n|---|---|---|")
    for name, (wall, cpu) in released.items():
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=128, help="width = height")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder)
        write_demo_models(models)
        engine = Engine.from_models_dir(models, device="cpu", default_checkpoint="tiny-sd15")
        results = measure(engine, args)
    report(results, released_seconds(), args)
    print(f"\nload average after: {', '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
