"""UNet and ControlNet forwards of the seed-002 InstantID request, and InstantID's extra wall time (issue 6).

    python bench/instantid_cost.py [--runs 3] [--width 120] [--height 160] [--threads 1]

The tiny SDXL demo model runs seed 002's settings: DPM++ SDE Karras, 15 steps, cfg 4.5, hires fix 1.6× with
R-ESRGAN 4x+ at denoise 0.05 (`hr_second_pass_steps` 0), both InstantID units (face embedding through the
IP-Adapter, face keypoints through the IdentityNet ControlNet) on a synthetic face photo. Only the size is
smaller: 120×160 (1/8 of the seed's 960×1280 per side, same 3:4 shape) → hires 192×256. The same request
without the ControlNet units runs alternately in the same process, so the difference is InstantID's cost.

Prompts: the demo tokenizer has one token per character, so the seed's prompts (≈ 20 and ≈ 35 CLIP tokens,
one 77-token chunk each in A1111) would become chunks of different counts here, and the engine, like A1111,
would then run cond and uncond as two batch-1 forwards. By default the bench uses shorter prompts that fit
one chunk each, so the CFG batching is A1111's for the real seed; `--seed-prompts` keeps the originals.

Forwards are counted by forward hooks on the pipeline's UNet and on the ControlNet module the engine loads
(the same cached instance), attributed to the stage of the next progress report. A1111's count: DPM++ SDE
evaluates 2·15 − 1 = 29 times in the base pass, and A1111's hires pass runs the full 15 steps (over a
stretched int(15 / 0.05) = 300-step schedule) = 29 more; each evaluation is one CFG batch of 2.
sd-webui-controlnet's `hr_option` default "Both" runs the ControlNet once per UNet evaluation in both passes
(the face-embedding unit has no ControlNet: its IP-Adapter lives inside the UNet's attention).
"""

import argparse
import base64
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import engine.generation_job  # noqa: E402
from engine import Engine  # noqa: E402
from engine.demo.models import write_demo_models  # noqa: E402


SEED_FILE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "seeds" / "002_645e89f4f859427c.txt"
STEPS = 15
# The tiny face detector scores a white 16-px block as a face when it looks at the photo at 128 px.
FACE_PHOTO_SIZE, FACE_PROCESSOR_RES = 128, 128
# One 75-token chunk each under the demo tokenizer (one token per character), as the seed's are under CLIP's.
ONE_CHUNK_PROMPTS = {
    "prompt": "watercolor painting, vibrant, beautiful, painterly",
    "negative_prompt": "(lowres, low quality:1.2), watermark, deformed",
}


def machine_line() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
        f"python {platform.python_version()}, load average {load}"
    )


def face_photo() -> str:
    image = np.zeros((FACE_PHOTO_SIZE, FACE_PHOTO_SIZE, 3), np.uint8)
    image[16:32, 16:32] = 255
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def seed_payload(width: int, height: int, seed_prompts: bool = False) -> dict:
    text = SEED_FILE.read_text()
    payload = json.loads(text.split("```json", 1)[1].split("```", 1)[0])["input"]["payload"]
    payload["override_settings"]["sd_model_checkpoint"] = "tiny-sdxl"
    payload.update(width=width, height=height, seed=7)
    if not seed_prompts:
        payload.update(ONE_CHUNK_PROMPTS)
    photo = face_photo()
    for unit in payload["alwayson_scripts"]["controlnet"]["args"]:
        unit.update(image=photo, processor_res=FACE_PROCESSOR_RES)
    return payload


def without_instantid(payload: dict) -> dict:
    return {key: value for key, value in payload.items() if key != "alwayson_scripts"}


class ForwardCounter:
    """Forward hooks on named modules: forwards, batch rows and seconds per (module, stage), assigned to the
    stage of the next progress report."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.pending: list[tuple[str, int, float, float]] = []
        self.counts: dict[tuple[str, str], dict[str, float]] = {}
        self._started: dict[str, tuple[float, float]] = {}
        for name, module in modules.items():
            module.register_forward_pre_hook(self._before(name))
            module.register_forward_hook(self._after(name))

    def _before(self, name: str):
        def hook(module, args, kwargs=None):
            self._started[name] = (time.perf_counter(), time.process_time())

        return hook

    def _after(self, name: str):
        def hook(module, args, output):
            wall, cpu = self._started[name]
            self.pending.append((name, args[0].shape[0], time.perf_counter() - wall, time.process_time() - cpu))

        return hook

    def on_progress(self, progress) -> None:
        for name, rows, wall, cpu in self.pending:
            entry = self.counts.setdefault((name, progress.stage), {"forwards": 0, "rows": 0, "wall": 0.0, "cpu": 0.0})
            entry["forwards"] += 1
            entry["rows"] += rows
            entry["wall"] += wall
            entry["cpu"] += cpu
        self.pending.clear()

    def reset(self) -> None:
        self.pending.clear()
        self.counts = {}


class TimedPrepareControl:
    """Times the engine's control preparation (face analysis, keypoint map, model fetch) by wrapping the
    name `engine.generation_job` calls; restored by `restore()`."""

    def __init__(self):
        self.seconds: list[dict[str, float]] = []
        self._original = engine.generation_job.prepare_control

        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            result = self._original(*args, **kwargs)
            self.seconds.append({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu})
            return result

        engine.generation_job.prepare_control = timed

    def restore(self) -> None:
        engine.generation_job.prepare_control = self._original


def timed_request(service, payload: dict, counter: ForwardCounter) -> dict:
    counter.reset()
    wall, cpu = time.perf_counter(), time.process_time()
    service.txt2img(payload, on_progress=counter.on_progress)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "counts": counter.counts}


def measure(models: Path, width: int, height: int, runs: int, seed_prompts: bool) -> dict:
    service = Engine.from_models_dir(models, device="cpu")
    full = seed_payload(width, height, seed_prompts)
    plain = without_instantid(full)
    service.txt2img(full)  # loads every model the request needs, so the hooks can go on the cached instances
    pipe = service._pipelines.get(service.resolve_checkpoint("tiny-sdxl"))
    keypoint_unit = full["alwayson_scripts"]["controlnet"]["args"][1]
    controlnet_path = service.catalog.find_controlnet(keypoint_unit["model"]).entry.path
    counter = ForwardCounter({"UNet": pipe.unet, "ControlNet": service.control_models.controlnet(controlnet_path)})
    timed_request(service, plain, counter)  # warm-up of the plain request
    preparation = TimedPrepareControl()
    try:
        plain_runs, full_runs = [], []
        for _ in range(runs):
            plain_runs.append(timed_request(service, plain, counter))
            full_runs.append(timed_request(service, full, counter))
    finally:
        preparation.restore()
    return {"plain": plain_runs, "full": full_runs, "prepare": preparation.seconds}


def count_table(full_counts: dict, plain_counts: dict) -> None:
    expected_evals = 2 * STEPS - 1
    print("| forwards (hooked) | base pass | hires pass | request | batch rows | A1111 |")
    print("|---|---|---|---|---|---|")
    rows = [
        ("UNet, with InstantID", full_counts, "UNet", f"{expected_evals} + {expected_evals} evals (CFG batch 2)"),
        ("ControlNet (IdentityNet)", full_counts, "ControlNet", f"{expected_evals} + {expected_evals} "
                                                                 "(one per UNet eval, hr_option Both)"),
        ("UNet, same request without InstantID", plain_counts, "UNet", f"{expected_evals} + {expected_evals}"),
    ]
    for label, counts, module, a1111 in rows:
        base = counts.get((module, "base"), {"forwards": 0, "rows": 0})
        hires = counts.get((module, "hires"), {"forwards": 0, "rows": 0})
        total = base["forwards"] + hires["forwards"]
        print(f"| {label} | {base['forwards']} | {hires['forwards']} | {total} | "
              f"{base['rows'] + hires['rows']} | {a1111} |")


def seconds_of(run: dict, module: str, clock: str) -> float:
    return sum(entry[clock] for (name, _), entry in run["counts"].items() if name == module)


def report(result: dict, width: int, height: int, runs: int) -> None:
    plain, full = result["plain"], result["full"]
    print(f"\nSeed-002 settings on tiny SDXL at {width}×{height} → hires {round(width * 1.6)}×{round(height * 1.6)}; "
          f"medians of {runs} runs after a warm-up.\n")
    count_table(full[0]["counts"], plain[0]["counts"])
    clocks = ("wall", "cpu")
    plain_s = {clock: statistics.median(run[clock] for run in plain) for clock in clocks}
    full_s = {clock: statistics.median(run[clock] for run in full) for clock in clocks}
    prepare = {clock: statistics.median(entry[clock] for entry in result["prepare"]) for clock in clocks}
    unet_plain = {clock: statistics.median(seconds_of(run, "UNet", clock) for run in plain) for clock in clocks}
    unet_full = {clock: statistics.median(seconds_of(run, "UNet", clock) for run in full) for clock in clocks}
    controlnet = {clock: statistics.median(seconds_of(run, "ControlNet", clock) for run in full) for clock in clocks}
    rows = [
        ("request without InstantID", plain_s),
        ("request with both InstantID units", full_s),
        ("extra for InstantID (difference)", {clock: full_s[clock] - plain_s[clock] for clock in clocks}),
        ("of which unit preparation (face analysis, keypoint map)", prepare),
        ("of which ControlNet forwards (hooked)", controlnet),
        ("of which extra UNet time (IP-Adapter attention, residuals)",
         {clock: unet_full[clock] - unet_plain[clock] for clock in clocks}),
    ]
    print("\n| time | wall s | CPU s | ÷ request without InstantID: wall | CPU |\n|---|---|---|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds['wall']:.3f} | {seconds['cpu']:.3f} | "
              f"{seconds['wall'] / plain_s['wall']:.3f} | {seconds['cpu'] / plain_s['cpu']:.3f} |")
    print(f"\nUNet CPU seconds per request: {unet_plain['cpu']:.3f} without, {unet_full['cpu']:.3f} with InstantID.")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--width", type=int, default=120, help="the seed's is 960")
    parser.add_argument("--height", type=int, default=160, help="the seed's is 1280")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed-prompts", action="store_true", help="the seed's prompts (see above)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())
    with tempfile.TemporaryDirectory() as folder:
        write_demo_models(Path(folder))
        result = measure(Path(folder), args.width, args.height, args.runs, args.seed_prompts)
    report(result, args.width, args.height, args.runs)
    print(f"\nload average after: {', '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
