"""Concurrency (issue 10 item 14): the HTTP server under many clients and the library from several threads.

Every request is first served alone, one after another; then the same requests are sent by `--clients`
concurrent HTTP clients (a real uvicorn in a thread) and by `--threads` library threads. Prints how many results
equal the sequential ones (pixel hashes), the wall times side by side, and how fast `GET /sdapi/v1/progress`
answers while jobs run (polled every 20 ms).

    OMP_NUM_THREADS=1 python bench/concurrency.py [--clients 8] [--threads 4] [--requests 32] [--models DIR]
"""

import argparse
import logging
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from harness import demo_models, machine_line


def requests_mix(count: int) -> list[tuple[str, dict]]:
    """`count` distinct calls: txt2img (four samplers, SD1.5 and SDXL, LoRA), img2img, inpaint, extras."""
    from tests.hostile import TINY, base_calls

    calls = base_calls()
    variants = [
        lambda seed: ("/sdapi/v1/txt2img", {**TINY, "steps": 2, "seed": seed, "sampler_name": "DPM++ 2M"}),
        lambda seed: ("/sdapi/v1/txt2img", {**calls["txt2img sdxl"][1], "seed": seed}),
        lambda seed: ("/sdapi/v1/txt2img", {**calls["txt2img lora + hires"][1], "seed": seed}),
        lambda seed: ("/sdapi/v1/img2img", {**calls["img2img"][1], "seed": seed}),
        lambda seed: ("/sdapi/v1/img2img", {**calls["inpaint"][1], "seed": seed}),
        lambda seed: ("/sdapi/v1/txt2img", {**TINY, "steps": 3, "seed": seed, "sampler_name": "Euler a"}),
        lambda seed: ("/sdapi/v1/extra-single-image", {**calls["extras"][1], "upscaling_resize": 1 + seed % 3 / 4}),
    ]
    return [variants[index % len(variants)](1000 + index) for index in range(count)]


def hashes(body: dict) -> list[str]:
    from tests.fuzzing import pixel_hash

    return [pixel_hash(image) for image in (body.get("images") or [body["image"]])]


def timed(action):
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--models")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)

    import httpx

    from engine import Engine
    from engine.server import create_app, serve_in_background

    engine = Engine.from_models_dir(demo_models(args.models), device="cpu", default_checkpoint="tiny-sd15")
    calls = requests_mix(args.requests)
    for endpoint, payload in calls[:7]:
        engine.handle("POST", endpoint, payload)  # every model resident before anything is timed

    sequential, sequential_s = timed(lambda: [hashes(engine.handle("POST", *call)) for call in calls])
    threaded, threaded_s = timed(lambda: list(ThreadPoolExecutor(args.threads).map(
        lambda call: hashes(engine.handle("POST", *call)), calls)))

    latencies: list[float] = []
    progress_seen: list[float] = []
    with (serve_in_background(create_app(engine)) as url,
          httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=4 * args.clients)) as http):

        def post(call):
            response = http.post(call[0], json=call[1])
            return hashes(response.json()) if response.status_code == 200 else [response.text]

        done = threading.Event()

        def poll():
            while not done.is_set():
                answer, seconds = timed(lambda: http.get("/sdapi/v1/progress").json())
                latencies.append(seconds)
                if answer["state"]["job_count"]:
                    progress_seen.append(answer["progress"])
                time.sleep(0.02)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            served, http_s = timed(lambda: list(ThreadPoolExecutor(args.clients).map(post, calls)))
        finally:
            done.set()
            poller.join()

    print(machine_line())
    print(f"{len(calls)} distinct requests (txt2img SD1.5/SDXL/LoRA+hires, img2img, inpaint, extras)")
    print("| run | wall s | ÷ sequential | results equal to sequential |")
    print("|---|---|---|---|")
    print(f"| sequential, library | {sequential_s:.1f} | 1.00 | reference |")
    print(f"| {args.threads} library threads | {threaded_s:.1f} | {threaded_s / sequential_s:.2f} | "
          f"{sum(a == b for a, b in zip(threaded, sequential, strict=True))} of {len(calls)} |")
    print(f"| {args.clients} HTTP clients | {http_s:.1f} | {http_s / sequential_s:.2f} | "
          f"{sum(a == b for a, b in zip(served, sequential, strict=True))} of {len(calls)} |")
    within = [p for p in progress_seen if 0 < p <= 1]
    print(f"progress polls during the HTTP run: {len(latencies)}, answer time median "
          f"{statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms; "
          f"{len(within)} of {len(progress_seen)} polls with a job running showed 0 < progress ≤ 1")


if __name__ == "__main__":
    main()
