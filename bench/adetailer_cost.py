"""What one ADetailer face costs next to the base pass, on the seed-000 payload shape (issue 5).

    python bench/adetailer_cost.py [--runs 3] [--size 256] [--threads 1]

The tiny SD1.5 demo model runs the seed-000 payload (DPM++ SDE Karras, 30 steps, cfg 7, its negative prompt
with four textual-inversion embeddings, ADetailer face_yolov8n.pt with ad_steps 28 at denoise 0.4). The
random-weight YOLO only finds a face at ad_confidence 0.001, so that and ad_mask_k_largest 1 are the only
changes: exactly one face. The same request without ADetailer runs alternately in the same process.

UNet forwards are counted by a forward hook on the pipeline's real UNet module (not by the engine's own
counter) and attributed to the stage of the next progress report. A1111's count for one face: the inpaint
runs int(0.4·28) + 1 = 12 DPM++ SDE steps = 2·12 − 1 = 23 evaluations, each a CFG pair; with the seed's
75-vector negative embedding cond and uncond have different token counts, so A1111 runs each evaluation as
two batch-1 forwards (46 forwards). Times are wall and process-CPU seconds (CPU time moves less when the
machine is shared); the face cost is split into detection (the YOLO call, timed around it) and the rest
(VAE encode, prompts, sampling, decode, paste).

Size: 256×256 by default, not the seed's 512×512. The tiny UNet's self-attention (8 heads of 4 channels)
over a 64×64 latent takes ≈ 1.1 s per forward on one thread (≈ 9× its 256×256 cost), which would make the
run ≈ 20 minutes. The ratios barely depend on the size: ADetailer inpaints the face crop at p.width ×
p.height, so the face pass and the base pass run at the same latent size. `--size 512` measures the seed's.
"""

import argparse
import json
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


SEED_FILE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "seeds" / "000_343685f6abe1ed79.txt"
# The seed negative prompt's embeddings and their vector counts (as bench/prompt_encoding.py writes them).
EMBEDDINGS = {
    "ng_deepnegative_v1_75t": 75,
    "badhandv4": 6,
    "verybadimagenegative_v1.3": 2,
    "negative_hand-neg": 4,
}
TINY_SD15_WIDTH = 32  # hidden size of the tiny demo text encoder
AD_STEPS, AD_DENOISE, BASE_STEPS = 28, 0.4, 30


def a1111_face_evals(steps: int = AD_STEPS, denoise: float = AD_DENOISE) -> int:
    # A1111 img2img runs int(denoise · steps) + 1 steps; DPM++ SDE evaluates twice per step except the last.
    return 2 * (int(denoise * steps) + 1) - 1


def machine_line() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
        f"python {platform.python_version()}, load average {load}"
    )


def seed_payload(size: int) -> dict:
    text = SEED_FILE.read_text()
    payload = json.loads(text.split("```json", 1)[1].split("```", 1)[0])["input"]["payload"]
    (unit,) = [arg for arg in payload["alwayson_scripts"]["ADetailer"]["args"] if isinstance(arg, dict)]
    unit.update(ad_confidence=0.001, ad_mask_k_largest=1)
    return {**payload, "seed": 1234, "width": size, "height": size}


def without_adetailer(payload: dict) -> dict:
    return {key: value for key, value in payload.items() if key != "alwayson_scripts"}


def write_embeddings(models: Path) -> None:
    folder = models / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for name, count in EMBEDDINGS.items():
        vectors = torch.randn(count, TINY_SD15_WIDTH, generator=generator)
        torch.save({"string_to_param": {"*": vectors}}, folder / f"{name}.pt")


class UnetCounter:
    """Forward hooks on one UNet: forwards, batch rows and seconds per stage, assigned at each progress report."""

    def __init__(self, unet: torch.nn.Module):
        self.pending: list[tuple[int, float, float]] = []
        self.stages: dict[str, dict[str, float]] = {}
        self._started = (0.0, 0.0)
        unet.register_forward_pre_hook(self._before)
        unet.register_forward_hook(self._after)

    def _before(self, module, args):
        self._started = (time.perf_counter(), time.process_time())

    def _after(self, module, args, output):
        wall, cpu = self._started
        self.pending.append((args[0].shape[0], time.perf_counter() - wall, time.process_time() - cpu))

    def on_progress(self, progress) -> None:
        stage = self.stages.setdefault(progress.stage, {"forwards": 0, "rows": 0, "wall": 0.0, "cpu": 0.0})
        for rows, wall, cpu in self.pending:
            stage["forwards"] += 1
            stage["rows"] += rows
            stage["wall"] += wall
            stage["cpu"] += cpu
        self.pending.clear()

    def reset(self) -> None:
        self.pending.clear()
        self.stages = {}


class TimedDetector:
    """Wraps a detector instance's `detect` to time each call (wall and CPU seconds)."""

    def __init__(self, detector):
        self.seconds: list[tuple[float, float]] = []
        original = detector.detect

        def detect(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            found = original(*args, **kwargs)
            self.seconds.append((time.perf_counter() - wall, time.process_time() - cpu))
            return found

        detector.detect = detect


def timed_request(engine, payload: dict, counter: UnetCounter) -> dict:
    counter.reset()
    wall, cpu = time.perf_counter(), time.process_time()
    engine.txt2img(payload, on_progress=counter.on_progress)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "stages": counter.stages}


def measure(models: Path, size: int, runs: int) -> dict:
    engine = Engine.from_models_dir(models, device="cpu", default_checkpoint="tiny-sd15")
    pipe = engine._pipelines.get(engine.resolve_checkpoint("tiny-sd15"))
    counter = UnetCounter(pipe.unet)
    detector = TimedDetector(engine.detectors.for_model(engine.catalog, "face_yolov8n.pt"))
    full = seed_payload(size)
    plain = without_adetailer(full)
    timed_request(engine, plain, counter), timed_request(engine, full, counter)  # warm-up
    detector.seconds.clear()
    plain_runs, full_runs = [], []
    for _ in range(runs):
        plain_runs.append(timed_request(engine, plain, counter))
        full_runs.append(timed_request(engine, full, counter))
    return {"plain": plain_runs, "full": full_runs, "detect": detector.seconds}


def median(runs: list[dict], *keys: str) -> float:
    values = []
    for run in runs:
        value = run
        for key in keys:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def report(result: dict, size: int, runs: int) -> None:
    plain, full = result["plain"], result["full"]
    base, face = full[0]["stages"]["base"], full[0]["stages"]["adetailer"]
    print(f"\nSeed-000 shape on tiny SD1.5 at {size}×{size}; medians of {runs} runs after a warm-up.\n")
    print("| UNet work (forward hook) | forwards | batch rows | evaluations (rows ÷ 2) | A1111 evaluations |")
    print("|---|---|---|---|---|")
    print(f"| base pass | {base['forwards']} | {base['rows']} | {base['rows'] // 2} | "
          f"{2 * BASE_STEPS - 1} (2·30 − 1) |")
    print(f"| one face (ad_steps 28, denoise 0.4) | {face['forwards']} | {face['rows']} | {face['rows'] // 2} | "
          f"{a1111_face_evals()} (2·(int(0.4·28)+1) − 1) |")
    print("\n| time | wall s | CPU s | ÷ request without ADetailer: wall | CPU |\n|---|---|---|---|---|")
    plain_s = {clock: median(plain, clock) for clock in ("wall", "cpu")}
    full_s = {clock: median(full, clock) for clock in ("wall", "cpu")}
    detect = {clock: statistics.median(pair[index] for pair in result["detect"])
              for index, clock in enumerate(("wall", "cpu"))}
    extra = {clock: full_s[clock] - plain_s[clock] for clock in plain_s}
    rows = [
        ("request without ADetailer (base pass + decode)", plain_s),
        ("request with one face", full_s),
        ("extra for the face (difference)", extra),
        ("of which detection (YOLO call)", detect),
        ("of which inpaint (rest of the extra)", {clock: extra[clock] - detect[clock] for clock in extra}),
    ]
    for label, seconds in rows:
        print(f"| {label} | {seconds['wall']:.3f} | {seconds['cpu']:.3f} | "
              f"{seconds['wall'] / plain_s['wall']:.3f} | {seconds['cpu'] / plain_s['cpu']:.3f} |")
    print("\n| UNet seconds (hooked) | base pass wall / CPU | face inpaint wall / CPU | face ÷ base (CPU) |")
    print("|---|---|---|---|")
    unet = {(stage, clock): median(full, "stages", stage, clock)
            for stage in ("base", "adetailer") for clock in ("wall", "cpu")}
    print(f"| total | {unet['base', 'wall']:.3f} / {unet['base', 'cpu']:.3f} | "
          f"{unet['adetailer', 'wall']:.3f} / {unet['adetailer', 'cpu']:.3f} | "
          f"{unet['adetailer', 'cpu'] / unet['base', 'cpu']:.3f} |")
    base_ms = {clock: 1000 * unet["base", clock] / base["forwards"] for clock in ("wall", "cpu")}
    face_ms = {clock: 1000 * unet["adetailer", clock] / face["forwards"] for clock in ("wall", "cpu")}
    print(f"| per forward, ms | {base_ms['wall']:.1f} / {base_ms['cpu']:.1f} | "
          f"{face_ms['wall']:.1f} / {face_ms['cpu']:.1f} | {face_ms['cpu'] / base_ms['cpu']:.3f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="width = height (the seed's is 512)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder)
        write_demo_models(models)
        write_embeddings(models)
        result = measure(models, args.size, args.runs)
    report(result, args.size, args.runs)
    print(f"\nload average after: {', '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
