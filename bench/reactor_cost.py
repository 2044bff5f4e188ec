"""What ReActor's face swap costs next to the generation, and the ONNX runs it makes against ReActor's count
(issue 12).

    python bench/reactor_cost.py [--runs 3] [--size 192] [--steps 20] [--threads 2] [--models DIR]

One process, the tiny demo models (random weights). Side by side, alternately, `--runs` times after a warm-up:

- generation: tiny SD1.5 txt2img, batch of 2, Euler, `--steps`, `--size` square, no ReActor;
- generation + ReActor: the same with ReActor on (one-face source image, target face 0). The random-weight UNet
  draws no face, so this is the cost of looking: ReActor, as this worker, detects at 640 and again at 320;
- swap on a two-face image: the ReActor stage alone (`prepare_stage`: the source's detection; `apply`: the
  target's detection and both faces swapped) on a synthetic 320-px image whose two faces the tiny detector
  finds, without restoration and with GFPGAN / CodeFormer over the swapped image.

ONNX runs are counted by wrapping each insightface model's `session.run`. ReActor's count
(Gourieff/sd-webui-reactor `reactor_swapper.py`): one `FaceAnalysis.get` per source image and per target image
(detection, then for every face found each other model of the buffalo_l pack: `1k3d68`, `2d106det`,
`genderage`, `w600k_r50`: it builds `FaceAnalysis` without `allowed_modules`), a second one at 320 × 320 when
nothing is found, and one `INSwapper` run per swapped face. This worker loads only the detector, the recogniser
and gender/age (what a swap reads), so it makes 2 per-face runs where ReActor makes 4.
"""

import argparse
import base64
import io
import statistics
import time
import warnings

import numpy as np
from harness import demo_models, machine_line
from PIL import Image


SEED = 21
SIZE = 320
FACE = 16  # one cell of the tiny detector on a 320-px image (see engine.control.tiny_faces)
MODELS = ("detection", "recognition", "genderage", "swapper")


def faces_image(*corners) -> Image.Image:
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    for row, column in corners:
        pixels[row:row + FACE, column:column + FACE] = (250, 245, 120)
    return Image.fromarray(pixels)


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


SOURCE = faces_image((160, 160))
TARGET = faces_image((64, 64), (64, 192))


def reactor_args(faces_index: str = "0", restorer: str = "None") -> list:
    from engine.faceswap.args import ARG_DEFAULTS

    names = [name for name, _ in ARG_DEFAULTS]
    args = [default for _, default in ARG_DEFAULTS]
    for name, value in {"source_image": b64(SOURCE), "enable": True, "faces_index": faces_index,
                        "face_restorer": restorer}.items():
        args[names.index(name)] = value
    return args


class Counted:
    """Wraps one method of an object (an ONNX session's `run`, the detector's `forward`): calls and wall
    seconds since the last reset."""

    def __init__(self, owner, method: str = "run"):
        self.calls, self.wall = 0, 0.0
        original = getattr(owner, method)

        def counted(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.calls += 1
                self.wall += time.perf_counter() - started

        setattr(owner, method, counted)

    def reset(self):
        self.calls, self.wall = 0, 0.0


def hook_sessions(engine) -> dict[str, Counted]:
    from engine.faceswap.args import parse_reactor_args

    args = parse_reactor_args({"reactor": {"args": reactor_args()}})
    files = engine.face_swap.resolve(args)
    analyser = engine.face_swap.analyser(files)
    swapper = engine.face_swap.swapper(files)
    # The detector keeps one session per input size (640, and 320 for the retry): its `forward` is one run.
    counters = {"detection": Counted(analyser._models["detection"], "forward")}
    counters.update({task: Counted(analyser._models[task].session) for task in MODELS[1:3]})
    counters["swapper"] = Counted(swapper._model.session)
    return counters


def timed(action, counters: dict[str, Counted]) -> dict:
    for counter in counters.values():
        counter.reset()
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
            **{name: counter.calls for name, counter in counters.items()},
            "onnx_wall": sum(counter.wall for counter in counters.values())}


def cases(engine, args) -> dict:
    from engine.faceswap.args import parse_reactor_args
    from engine.faceswap.run import prepare_stage

    body = {"prompt": "a portrait", "seed": SEED, "steps": args.steps, "width": args.size, "height": args.size,
            "sampler_name": "Euler", "batch_size": 2}
    with_reactor = {**body, "alwayson_scripts": {"reactor": {"args": reactor_args()}}}

    def swap(restorer: str):
        parsed = parse_reactor_args({"reactor": {"args": reactor_args("0,1", restorer)}})
        return lambda: prepare_stage(parsed, engine).apply(TARGET, seed=SEED)

    return {
        "generation": lambda: engine.txt2img(body),
        "generation + ReActor": lambda: engine.txt2img(with_reactor),
        "swap, no restoration": swap("None"),
        "swap + GFPGAN": swap("GFPGAN"),
        "swap + CodeFormer": swap("CodeFormer"),
    }


# ReActor's ONNX runs for the same work: (detections, per-face model runs, swaps).
REACTOR_COUNTS = {
    # source: 1 detection, 1 face × 4; each of 2 images: no face, so 640 then 320.
    "generation + ReActor": (1 + 2 * 2, 1 * 4, 0),
    # source: 1 detection, 1 face × 4; target: 1 detection, 2 faces × 4; 2 swaps.
    "swap, no restoration": (2, 3 * 4, 2),
}


def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=192, help="generated width = height")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--models", help="a folder with (or for) the demo models")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # insightface's scikit-image `estimate` call
    from engine import Engine

    engine = Engine.from_models_dir(demo_models(args.models), device="cpu", default_checkpoint="tiny-sd15")
    print(machine_line())
    runs = cases(engine, args)
    for action in runs.values():
        action()  # warm-up: loads every model
    counters = hook_sessions(engine)
    results = {name: [] for name in runs}
    for _ in range(args.runs):
        for name, action in runs.items():
            results[name].append(timed(action, counters))
    report(results, args)


def report(results: dict, args) -> None:
    def med(name: str, key: str) -> float:
        return statistics.median(run[key] for run in results[name])

    print(f"\nTiny SD1.5 batch of 2 at {args.size}×{args.size}, Euler {args.steps} steps; swap target: {SIZE}-px "
          f"image with two faces, both swapped. Medians of {args.runs} runs after a warm-up.\n")
    base = med("generation", "cpu")
    print("| work | wall s | CPU s | ÷ generation (CPU) | ONNX wall s |")
    print("|---|---|---|---|---|")
    for name in results:
        print(f"| {name} | {med(name, 'wall'):.3f} | {med(name, 'cpu'):.3f} | {med(name, 'cpu') / base:.3f} | "
              f"{med(name, 'onnx_wall'):.3f} |")
    extra = med("generation + ReActor", "cpu") - base
    print(f"| ReActor's share of the request (difference) | | {extra:.3f} | {extra / base:.3f} | |")
    print("\n| work | detector runs | recogniser + gender/age runs | swapper runs | ReActor: detector / per-face "
          "/ swapper |")
    print("|---|---|---|---|---|")
    for name in results:
        last = results[name][-1]
        expected = REACTOR_COUNTS.get(name, REACTOR_COUNTS["swap, no restoration"]) if name != "generation" \
            else (0, 0, 0)
        print(f"| {name} | {last['detection']} | {last['recognition'] + last['genderage']} | {last['swapper']} | "
              f"{expected[0]} / {expected[1]} / {expected[2]} |")


if __name__ == "__main__":
    main()
