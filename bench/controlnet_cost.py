"""Per ControlNet unit type: preprocess time and ControlNet / adapter forwards per request, beside
sd-webui-controlnet's count (issue 12, "Measure").

    python bench/controlnet_cost.py [--steps 8] [--size 64] [--runs 3] [--only depth_anything]

One process, the tiny demo models (random weights, written to a temporary folder), Euler, CFG 5 (cond and
uncond in one batch), txt2img at --size px. For each unit type the same request runs --runs times; the table
shows the median preprocess time (resolving, loading on the first run only, drawing the map: the engine's
`prepare_control`), the forwards the worker ran and the count sd-webui-controlnet v1.1.455 runs:

- a ControlNet (also union, InstantID's IdentityNet) runs once per UNet evaluation whose sampling fraction lies in
  the unit's guidance window (`hook.py`: `sampling_step / total_sampling_steps`, the step of the last callback);
- a T2I-Adapter's features depend only on the hint: `PlugableAdapter` computes them once and reuses them;
- ADetailer's ControlNet runs inside each inpaint pass (here one mask, int(0.4 · steps) + 1 steps);
- an IP-Adapter unit runs no extra model per UNet evaluation (its image attention is inside the UNet's own
  cross-attention): its image encoder (CLIP, or insightface for FaceID) runs once per request, and the UNet
  evaluations stay those of the same request without the unit. Those rows show the CLIP forwards and the UNet
  evaluations with and without the units.
"""

import argparse
import base64
import io
import logging
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

from engine import Engine  # noqa: E402
from engine.control import request as control_request  # noqa: E402
from engine.demo.models import write_demo_models  # noqa: E402


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _photo(size: int) -> Image.Image:
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[size // 8 : size // 2, size // 5 : size * 3 // 4] = (230, 200, 40)
    pixels[size // 2 :, size // 3 :] = (20, 90, 210)
    return Image.fromarray(pixels)


def _mask(size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, size * 3 // 4, size * 3 // 4))
    return mask


def unit_types(size: int) -> dict[str, tuple[str, dict]]:
    """name → (checkpoint, unit)."""
    image = _b64(_photo(size))
    return {
        "canny → ControlNet 1.1 (SD1.5, LDM file)": ("tiny-sd15", {"module": "canny", "model": "control_v11p_sd15_canny",
                                                                    "image": image}),
        "hed → ControlNet, window 0.2–0.7": ("tiny-sd15", {"module": "hed", "model": "control_v11f1p_sd15_depth",
                                                           "image": image, "guidance_start": 0.2, "guidance_end": 0.7}),
        "lineart → ControlNet": ("tiny-sd15", {"module": "lineart", "model": "control_v11f1p_sd15_depth", "image": image}),
        "inpaint_only → inpaint ControlNet": ("tiny-sd15", {"module": "inpaint_only", "model": "control_v11p_sd15_inpaint",
                                                           "image": {"image": image, "mask": _b64(_mask(size))}}),
        "shuffle → pooled ControlNet": ("tiny-sd15", {"module": "shuffle", "model": "control_v11e_sd15_shuffle",
                                                      "image": image}),
        "tile_colorfix → ControlNet": ("tiny-sd15", {"module": "tile_colorfix", "model": "control_v11f1p_sd15_depth",
                                                     "image": image}),
        "invert → T2I-Adapter (SD1.5)": ("tiny-sd15", {"module": "invert", "model": "t2iadapter_depth_sd15v2",
                                                       "image": image}),
        "canny → union ControlNet (SDXL)": ("tiny-sdxl", {"module": "canny", "model": "controlnet-union-sdxl-promax",
                                                          "image": image}),
        "blur_gaussian → SDXL ControlNet": ("tiny-sdxl", {"module": "blur_gaussian", "model": "diffusers_xl_depth_tiny",
                                                          "image": image}),
        "depth_anything → ControlNet": ("tiny-sd15", {"module": "depth_anything", "model": "control_v11f1p_sd15_depth",
                                                      "image": image}),
        "depth_anything_v2 → ControlNet": ("tiny-sd15", {"module": "depth_anything_v2",
                                                         "model": "control_v11f1p_sd15_depth", "image": image}),
        "dw_openpose_full → union ControlNet (SDXL)": ("tiny-sdxl", {"module": "dw_openpose_full",
                                                                     "model": "controlnet-union-sdxl-promax",
                                                                     "image": image}),
        "animal_openpose → ControlNet": ("tiny-sd15", {"module": "animal_openpose",
                                                       "model": "control_v11f1p_sd15_depth", "image": image}),
        "seg_anime_face → ControlNet": ("tiny-sd15", {"module": "seg_anime_face", "model": "control_v11f1p_sd15_depth",
                                                      "image": image}),
        "seg_ofade20k → ControlNet": ("tiny-sd15", {"module": "seg_ofade20k", "model": "control_v11f1p_sd15_depth",
                                                    "image": image}),
        "seg_ofcoco → ControlNet": ("tiny-sd15", {"module": "seg_ofcoco", "model": "control_v11f1p_sd15_depth",
                                                  "image": image}),
    }


def sd_webui_count(unit: dict, steps: int, is_adapter: bool) -> int:
    """sd-webui-controlnet's forwards for one txt2img pass of `steps` single-evaluation steps."""
    if is_adapter:
        return 1
    start, end = unit.get("guidance_start", 0.0), unit.get("guidance_end", 1.0)
    fractions = [max(call - 1, 0) / steps for call in range(steps)]
    return sum(start <= fraction <= end for fraction in fractions)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="run only the unit types whose name contains this text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # diffusers' loading chatter
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    made, timings = [], []
    original = control_request.prepare_control

    def timed(*a, **k):
        started = time.perf_counter()
        made.append(original(*a, **k))
        timings.append(time.perf_counter() - started)
        return made[-1]

    # `engine.generation_job` imports `prepare_control` from its module at each request ("lazy ControlNet
    # import"), so the module attribute is the one to wrap.
    control_request.prepare_control = timed
    with tempfile.TemporaryDirectory() as folder:
        write_demo_models(Path(folder))
        worker = Engine.from_models_dir(folder, device="cpu")
        load = os.getloadavg()
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "  # noqa: T201
              f"load {load[0]:.1f} (shared with other agents), torch threads {args.threads}")
        print(f"Euler, {args.steps} steps, CFG 5, {args.size}×{args.size}, median of {args.runs} runs")  # noqa: T201
        if any(args.only in name for name in [*unit_types(args.size), "ADetailer"]):
            print(f"{'unit type':48} {'first ms':>9} {'warm ms':>8} {'forwards':>9} "  # noqa: T201
                  f"{'sd-webui-controlnet':>20} {'ratio':>6}")
        for name, (checkpoint, unit) in unit_types(args.size).items():
            if args.only in name:
                run_unit(worker, name, checkpoint, unit, args, made, timings)
        if args.only in "ADetailer":
            run_adetailer(worker, args, made, timings)
        ip_units = ip_adapter_types(args.size)
        if any(args.only in name for name in ip_units):
            print(f"{'IP-Adapter units':48} {'first ms':>9} {'warm ms':>8} {'CLIP fwd':>9} "  # noqa: T201
                  f"{'UNet evals':>11} {'without':>8} {'sd-webui-controlnet':>20}")
            for name, (checkpoint, units) in ip_units.items():
                if args.only in name:
                    run_ip_adapter(worker, name, checkpoint, units, args, timings)


def _payload(checkpoint: str, units: list, args) -> dict:
    return {"prompt": "a fox", "steps": args.steps, "width": args.size, "height": args.size, "seed": 3,
            "cfg_scale": 5, "sampler_name": "Euler", "override_settings": {"sd_model_checkpoint": checkpoint},
            "alwayson_scripts": {"controlnet": {"args": units}}}


def run_unit(worker, name, checkpoint, unit, args, made, timings) -> None:
    payload = _payload(checkpoint, [unit], args)
    times, counts = [], []
    for _ in range(args.runs):
        worker.txt2img(payload)
        times.append(timings[-1] * 1000)
        counts.append(made[-1].model_calls)
    is_adapter = type(made[-1].map_units[0].model).__name__ == "T2IAdapter"
    expected = sd_webui_count(unit, args.steps, is_adapter)
    print(f"{name:48} {times[0]:9.0f} {statistics.median(times[1:] or times):8.0f} {counts[-1]:9d} "  # noqa: T201
          f"{expected:20d} {counts[-1] / expected:6.2f}")


def run_adetailer(worker, args, made, timings) -> None:
    """ADetailer's inpaint ControlNet with a fixed box (the random-weight YOLO finds nothing reliably)."""
    from engine.detailer import detect
    from engine.detailer.masks import Detections, box_mask

    box = (args.size // 4, args.size // 4, args.size * 3 // 4, args.size * 3 // 4)
    detect.YoloDetector.detect = lambda self, image, confidence: Detections(
        image.size, (tuple(map(float, box)),), (0.9,), (box_mask(image.size, box),))
    payload = _payload("tiny-sd15", [], args)
    payload["alwayson_scripts"] = {"ADetailer": {"args": [True, False, {
        "ad_model": "face_yolov8n.pt", "ad_controlnet_model": "control_v11p_sd15_inpaint"}]}}
    times, counts = [], []
    for _ in range(args.runs):
        worker.txt2img(payload)
        times.append(timings[-1] * 1000)
        counts.append(made[-1].model_calls)
    inner_steps = int(0.4 * args.steps) + 1
    expected = sd_webui_count({}, inner_steps, False)
    print(f"{'ADetailer inpaint → inpaint ControlNet':48} {times[0]:9.0f} {statistics.median(times[1:] or times):8.0f} "  # noqa: T201
          f"{counts[-1]:9d} {expected:20d} {counts[-1] / expected:6.2f}")


def ip_adapter_types(size: int) -> dict[str, tuple[str, list[dict]]]:
    """name → (checkpoint, units). The demo face detector takes a white block for a face."""
    face = np.zeros((size * 2, size * 2, 3), np.uint8)
    face[16:32, 16:32] = 255
    image = _b64(Image.fromarray(face))
    plain = {"module": "ip-adapter_clip_sd15", "model": "ip-adapter_sd15", "image": image}
    plus_face = {"module": "ip-adapter_clip_sd15", "model": "ip-adapter-plus-face_sd15", "image": image}
    face_id = {"module": "ip-adapter_face_id", "model": "ip-adapter-faceid_sd15", "image": image}
    face_id_plus = {"module": "ip-adapter_face_id_plus", "model": "ip-adapter-faceid-plusv2_sd15", "image": image}
    return {
        "ip-adapter_clip_sd15 → ip-adapter_sd15": ("tiny-sd15", [plain]),
        "ip-adapter_clip_sd15 → plus-face, window 0.2–0.7": ("tiny-sd15", [{**plus_face, "guidance_start": 0.2,
                                                                             "guidance_end": 0.7}]),
        "ip-adapter_face_id → faceid_sd15": ("tiny-sd15", [face_id]),
        "ip-adapter_face_id_plus → faceid-plusv2_sd15": ("tiny-sd15", [face_id_plus]),
        "ip-adapter_clip_sdxl_plus_vith → plus_sdxl_vit-h": ("tiny-sdxl", [
            {"module": "ip-adapter_clip_sdxl_plus_vith", "model": "ip-adapter-plus_sdxl_vit-h", "image": image}]),
        "4 ip-adapter units at once (SD1.5)": ("tiny-sd15", [plain, plus_face, face_id, face_id_plus]),
    }


def run_ip_adapter(worker, name, checkpoint, units, args, timings) -> None:
    """CLIP forwards (the encoder's calls, the zero image's once per loaded encoder included) and UNet
    evaluations (forwards of the checkpoint's UNet) per request, with the units and without them."""
    from engine.control.clip_vision import ClipVisionEncoder

    clip_calls = []
    encode = ClipVisionEncoder.encode_pixels

    def counted(self, pixel_values):
        clip_calls[-1] += 1
        return encode(self, pixel_values)

    ClipVisionEncoder.encode_pixels = counted
    try:
        pipe = worker._pipelines.get(worker.catalog.find_checkpoint(checkpoint))
        evaluations = []
        hook = pipe.unet.register_forward_hook(lambda module, inputs, output: evaluations.__setitem__(-1, evaluations[-1] + 1))
        try:
            evaluations.append(0)
            worker.txt2img({**_payload(checkpoint, [], args), "alwayson_scripts": {}})
            without = evaluations[-1]
            times = []
            for _ in range(args.runs):
                clip_calls.append(0)
                evaluations.append(0)
                worker.txt2img(_payload(checkpoint, units, args))
                times.append(timings[-1] * 1000)
        finally:
            hook.remove()
    finally:
        ClipVisionEncoder.encode_pixels = encode
    clip_units = sum(unit["module"] != "ip-adapter_face_id" for unit in units)
    expected = f"{clip_units} CLIP, {without} evals"
    print(f"{name:48} {times[0]:9.0f} {statistics.median(times[1:] or times):8.0f} {clip_calls[-1]:9d} "  # noqa: T201
          f"{evaluations[-1]:11d} {without:8d} {expected:>20}")


if __name__ == "__main__":
    main()
