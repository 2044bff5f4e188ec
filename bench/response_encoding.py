"""The response after the last step, for a 1536×2048 result (issue 13, item 7).

Times, side by side in one process, what follows the sampler once the VAE has decoded: the decoded tensor →
uint8 image, PNG with A1111's `parameters` chunk, base64, and the JSON the RunPod SDK sends (plus the handler's
size check). Three ways: A1111's (numpy conversion, PIL's default zlib level 6), this engine's previous one
(zlib level 1) and the current one (`engine.imaging.png`). Goal: PNG encode ≤ 0.4 × PIL's default, lossless.
The VAE decode itself is model work, measured with the sampler (`bench/engine_vs_diffusers.py`).

The image is a photograph upscaled to 1536×2048 (skimage's `astronaut`, when scikit-image is installed; a
smooth synthetic image otherwise) with ±2 noise, as a hires-fix result is smooth at pixel scale but not flat.

    python bench/response_encoding.py [--repeats 5]
"""

import argparse
import base64
import io
import json
import os
import platform
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.imaging.png import encode_base64  # noqa: E402
from engine.pipeline import decoded_to_image  # noqa: E402


WIDTH, HEIGHT = 1536, 2048
GOAL = 0.4
INFOTEXT = ("a watercolor fox in the snow, detailed fur\nNegative prompt: blurry\nSteps: 30, Sampler: DPM++ 2M, "
            "Schedule type: Karras, CFG scale: 6, Seed: 42, Size: 768x1024, Model: sd_xl_base_1.0, "
            "Denoising strength: 0.4, Hires upscale: 2, Hires upscaler: Latent, Version: v1.10.1")


def photo() -> Image.Image:
    try:
        from skimage import data

        small = Image.fromarray(data.astronaut())
    except ImportError:
        y, x = np.mgrid[0:256, 0:192] / 32.0
        small = Image.fromarray(
            (np.stack([np.sin(x) * np.cos(y), np.sin(x + y), np.cos(x * y / 8)], -1) * 110 + 128).astype(np.uint8)
        )
    pixels = np.asarray(small.convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS), dtype=np.int16)
    pixels += np.random.default_rng(0).integers(-2, 3, size=pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def numpy_to_image(decoded: torch.Tensor) -> Image.Image:
    """A1111 / this engine before: clamp in torch, scale and truncate in numpy on the host."""
    pixels = torch.clamp((decoded.float() + 1.0) / 2.0, 0.0, 1.0)
    return Image.fromarray((255.0 * pixels.permute(1, 2, 0).cpu().numpy()).astype(np.uint8))


def pil_png_base64(image: Image.Image, **options) -> str:
    """A1111's `encode_pil_to_base64` shape: PNG into a buffer, copied out, base64, str."""
    metadata = PngImagePlugin.PngInfo()
    metadata.add_text("parameters", INFOTEXT)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=metadata, **options)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def response_json(image_b64: str) -> int:
    """What leaves the worker: the handler's size check, then the SDK's own serialisation."""
    body = {"images": [image_b64], "parameters": {"prompt": "a fox"}, "info": json.dumps({"infotexts": [INFOTEXT]})}
    size = len(json.dumps(body, ensure_ascii=False).encode())
    json.dumps({"output": body})
    return size


def timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def machine_line() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, pillow {Image.__version__}, "
            f"zlib {zlib.ZLIB_RUNTIME_VERSION}, python {platform.python_version()}, load average {load}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    reference = photo()
    decoded = torch.from_numpy(np.asarray(reference, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()
    ways = {
        "A1111 (numpy, zlib 6)": (numpy_to_image, lambda image: pil_png_base64(image)),
        "engine before (numpy, zlib 1)": (numpy_to_image, lambda image: pil_png_base64(image, compress_level=1)),
        "engine now (`decoded_to_image`, `encode_base64`)": (decoded_to_image, lambda image: encode_base64(image, INFOTEXT)),
    }
    rows = {}
    for name, (to_image, to_base64) in ways.items():
        convert, image = timed(lambda to_image=to_image: to_image(decoded), args.repeats)
        encode, encoded = timed(lambda to_base64=to_base64, image=image: to_base64(image), args.repeats)
        serialise, size = timed(lambda encoded=encoded: response_json(encoded), args.repeats)
        data = base64.b64decode(encoded)
        with Image.open(io.BytesIO(data)) as back:
            lossless = back.tobytes() == image.tobytes() and back.info.get("parameters") == INFOTEXT
        rows[name] = (convert, encode, serialise, len(data), size, lossless)
    # PNG encode alone (no base64), the figure the goal is about.
    encode_only = {
        "PIL default (level 6)": {},
        "level 1": {"compress_level": 1},
        "level 1, run-length strategy (engine now)": {"compress_level": 1, "compress_type": zlib.Z_RLE},
    }
    png_times = {}
    for name, options in encode_only.items():
        png_times[name], _ = timed(lambda options=options: reference.save(io.BytesIO(), format="PNG", **options),
                                   args.repeats)

    print(machine_line())
    print(f"\n{WIDTH}×{HEIGHT} RGB result; medians of {args.repeats}.\n")
    print("| PNG encode only | s | ÷ PIL default |")
    print("|---|---|---|")
    base = png_times["PIL default (level 6)"]
    for name, seconds in png_times.items():
        print(f"| {name} | {seconds:.3f} | **{seconds / base:.3f}** |")
    print(f"\nGoal ≤ {GOAL} × PIL default.\n")
    print("| after the last step | tensor → image s | PNG + base64 s | JSON (size check + SDK) s | total s | "
          "PNG MB | response MB | lossless + infotext |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (convert, encode, serialise, png_size, size, lossless) in rows.items():
        total = convert + encode + serialise
        print(f"| {name} | {convert:.3f} | {encode:.3f} | {serialise:.3f} | {total:.3f} | {png_size / 1e6:.2f} | "
              f"{size / 1e6:.2f} | {lossless} |")
    first, last = (sum(rows[name][:3]) for name in (next(iter(rows)), list(rows)[-1]))
    print(f"\ntotal after the last step, engine now ÷ A1111: **{last / first:.3f}**")


if __name__ == "__main__":
    main()
