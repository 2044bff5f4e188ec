"""The work of each A1111 script and request feature of issue 11, counted against A1111's formula.

    python bench/scripts_cost.py [--threads 1]

Every feature runs once on the tiny SD1.5 demo model (64×64, Euler, CFG 7; the scripts' own settings as in the
table), next to a plain one-image request of the same size. UNet work is counted by a forward hook on the
pipeline's real UNet (not the engine's counter): each image evaluation is one CFG pair, so evaluations =
batch rows ÷ 2. The A1111 column is what A1111's code runs for the same request:

- X/Y/Z plot: one generation per cell, so evaluations = Σ over cells of the cell's steps (× images per cell).
- Prompt matrix: 2^(parts − 1) images × steps; Prompts from file: Σ over lines of images × steps.
- img2img scripts: A1111's img2img runs int(denoise · steps) + 1 steps per image (no `img2img_fix_steps`):
  SD upscale: tiles × that; Loopback: Σ over loops with each loop's strength; Outpainting mk2: one pass per
  direction; Poor man's: one pass per border tile.
- Hires fix at denoising 0: the base pass only (A1111's 0-step schedule); styles and the built-in always-on
  scripts: no work of their own (the plain request's count).

Times are wall seconds of the whole request (PNG encoding excluded), divided by evaluations and compared with
the plain request's seconds per evaluation: the script's overhead (grids, tiling, re-encoding) shows as a ratio
above 1. The machine is shared with other jobs: wall times are noisy, evaluation counts are exact.
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from engine import Engine  # noqa: E402
from engine.demo.models import write_demo_models  # noqa: E402
from engine.imaging.png import png_base64  # noqa: E402
from engine.upscale.grid import tile_origins  # noqa: E402


STEPS, SIZE = 4, 64
BASE = {"prompt": "a lighthouse", "seed": 3, "steps": STEPS, "width": SIZE, "height": SIZE, "sampler_name": "Euler"}


def img2img_steps(denoise: float, steps: int = STEPS) -> int:
    return int(min(denoise, 0.999) * steps) + 1


def init_image() -> str:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    rgb = np.stack([x * 4, y * 4, 255 - (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    return png_base64(Image.fromarray(rgb), None)


def xyz_args(x_type, x_values, y_type, y_values) -> list:
    return [x_type, x_values, [], y_type, y_values, [], "Nothing", "", [], True, False, False, False, False,
            False, False, 0, False]


def sd_upscale_tiles(scale: float, overlap: int) -> int:
    side = int(SIZE * scale // 8 * 8)
    return len(tile_origins(side, SIZE, overlap)) ** 2


def cases() -> list[tuple[str, str, dict, int]]:
    """(feature, endpoint, payload, A1111's image evaluations)."""
    init = init_image()
    i2i = {**BASE, "init_images": [init]}
    loop_strengths = [0.6, 0.45, 0.3]  # 3 loops from 0.6 to 0.3, Linear
    return [
        ("plain txt2img (reference)", "txt2img", BASE, STEPS),
        ("styles (2 unknown names)", "txt2img", {**BASE, "styles": ["string", "None"]}, STEPS),
        ("built-in Seed + Sampler scripts", "txt2img",
         {**BASE, "alwayson_scripts": {"Seed": {"args": [5, True, 7, 0.2]}, "Sampler": {"args": [STEPS, "Euler"]}}},
         STEPS),
        ("hires fix, denoising 0, ×2", "txt2img", {**BASE, "enable_hr": True, "denoising_strength": 0}, STEPS),
        ("X/Y/Z: Steps 2,4,6 × CFG 4,8", "txt2img",
         {**BASE, "script_name": "X/Y/Z plot", "script_args": xyz_args("Steps", "2-6 (+2)", "CFG Scale", "4, 8")},
         (2 + 4 + 6) * 2),
        ("Prompt matrix: 3 parts, batch 2", "txt2img",
         {**BASE, "prompt": "a lighthouse|night|snow", "batch_size": 2, "script_name": "Prompt matrix",
          "script_args": [False, True, "positive", "comma", 0]}, 4 * STEPS),
        ("Prompts from file: 3 lines", "txt2img",
         {**BASE, "script_name": "Prompts from file or textbox",
          "script_args": [False, False, "start", "a\n--prompt b --steps 2\n--prompt c --batch_size 2"]},
         STEPS + 2 + 2 * STEPS),
        ("SD upscale ×2, overlap 16, denoise 0.5", "img2img",
         {**i2i, "denoising_strength": 0.5, "script_name": "SD upscale", "script_args": ["", 16, "Lanczos", 2.0]},
         sd_upscale_tiles(2.0, 16) * img2img_steps(0.5)),
        ("Loopback: 3 loops 0.6 → 0.3", "img2img",
         {**i2i, "denoising_strength": 0.6, "script_name": "Loopback", "script_args": [3, 0.3, "Linear", "None"]},
         sum(img2img_steps(strength) for strength in loop_strengths)),
        ("Outpainting mk2: left + right", "img2img",
         {**i2i, "denoising_strength": 0.8, "script_name": "Outpainting mk2",
          "script_args": ["", 32, 4, ["left", "right"], 1.0, 0.05]}, 2 * img2img_steps(0.8)),
        ("Poor man's outpainting: down 32", "img2img",
         {**i2i, "denoising_strength": 0.8, "script_name": "Poor man's outpainting",
          "script_args": [32, 4, "original", ["down"]]}, 2 * img2img_steps(0.8)),
    ]


class RowCounter:
    def __init__(self, unet: torch.nn.Module):
        self.rows = 0
        unet.register_forward_hook(self._count)

    def _count(self, module, args, output):
        self.rows += args[0].shape[0]


def run_case(engine, counter: RowCounter, endpoint: str, payload: dict) -> tuple[int, float, int]:
    counter.rows = 0
    started = time.perf_counter()
    result = getattr(engine, endpoint)(payload)
    return counter.rows // 2, time.perf_counter() - started, len(result.images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder) / "models"
        write_demo_models(models)
        engine = Engine.from_models_dir(models, device="cpu", default_checkpoint="tiny-sd15")
        counter = RowCounter(engine._pipelines.get(engine.resolve_checkpoint("tiny-sd15")).unet)
        engine.txt2img(BASE)  # warm-up
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s), "
              f"torch {torch.__version__}, load average {load}\n")
        print("| feature | images returned | evaluations | A1111's formula | match | wall s | s / evaluation "
              "÷ plain |")
        print("|---|---|---|---|---|---|---|")
        per_eval = None
        for name, endpoint, payload, expected in cases():
            evaluations, seconds, images = run_case(engine, counter, endpoint, payload)
            per_eval = per_eval or seconds / evaluations
            ratio = (seconds / evaluations) / per_eval
            match = "yes" if evaluations == expected else "**no**"
            print(f"| {name} | {images} | {evaluations} | {expected} | {match} | {seconds:.2f} | {ratio:.2f} |")
        print(f"\nload average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
