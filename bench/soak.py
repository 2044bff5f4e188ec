"""Soak the worker (issue 10 item 13): hundreds of mixed jobs on one engine, failing ones interleaved.

Resident memory (RSS) is sampled after every job; the slope after the warm-up (least-squares fit, bytes per job)
says whether anything accumulates. Every successful result is then compared with the same payload served by a
fresh engine (pixel hashes): nothing a job leaves behind may change another job's pixels.

    OMP_NUM_THREADS=1 python bench/soak.py --jobs 500 [--warm-up 100] [--models DIR]
"""

import argparse
import collections
import copy
import json
import logging
import time

import numpy as np
from harness import cap_heap, demo_models, machine_line, rss_bytes


def write_embeddings(root) -> None:
    """Two textual inversions for tiny-sd15 (A1111's .pt layout; the tiny text encoder is 32 wide)."""
    import torch

    folder = root / "embeddings"
    folder.mkdir(exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for name, count in (("soak-style", 2), ("soak-negative", 5)):
        torch.save({"string_to_param": {"*": torch.randn(count, 32, generator=generator)}}, folder / f"{name}.pt")


def templates() -> dict[str, tuple[str, dict]]:
    """Name → (endpoint, payload): every feature the worker serves, at tiny sizes, and jobs that must fail."""
    from tests.hostile import TINY, adetailer_unit, base_calls, controlnet_unit, hostile_images

    calls = base_calls()
    return {
        "sd15": calls["txt2img"],
        "sd15 DPM++ 2M Karras batch 2": ("/sdapi/v1/txt2img", {**TINY, "steps": 2, "batch_size": 2,
                                                               "sampler_name": "DPM++ 2M Karras"}),
        "sdxl": calls["txt2img sdxl"],
        "lora + hires (Latent)": calls["txt2img lora + hires"],
        "embeddings": ("/sdapi/v1/txt2img", {**TINY, "prompt": "soak-style, a fox", "negative_prompt": "soak-negative"}),
        "hires R-ESRGAN": ("/sdapi/v1/txt2img", {**TINY, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "R-ESRGAN 4x+",
                                                  "denoising_strength": 0.4, "hr_second_pass_steps": 1}),
        "img2img": calls["img2img"],
        "inpaint": calls["inpaint"],
        "adetailer": calls["adetailer"],
        "seed 000 (adetailer, DPM++ SDE)": calls["seed 000"],
        "controlnet canny": calls["controlnet"],
        "controlnet + adetailer": ("/sdapi/v1/txt2img", {**TINY, "alwayson_scripts": {
            "controlnet": {"args": [controlnet_unit(weight=0.5)]}, "ADetailer": {"args": [adetailer_unit()]}}}),
        "seed 002 (sdxl, InstantID, hires)": calls["seed 002"],
        "extras": calls["extras"],
        # Jobs that fail, at every stage: parsing, name resolution, image decoding, mid-generation checks.
        "fails: unknown sampler": ("/sdapi/v1/txt2img", {**TINY, "sampler_name": "Euler z"}),
        "fails: steps over the limit": ("/sdapi/v1/txt2img", {**TINY, "steps": 10_000}),
        "fails: not an image": ("/sdapi/v1/img2img", {**calls["img2img"][1], "init_images": ["not base64"]}),
        "fails: truncated PNG": ("/sdapi/v1/img2img", {**calls["img2img"][1],
                                                       "init_images": [hostile_images()["truncated PNG"]]}),
        "fails: InstantID on SD1.5": ("/sdapi/v1/txt2img", {
            **{key: value for key, value in calls["seed 002"][1].items() if key != "override_settings"}}),
        "fails: unknown ADetailer model": ("/sdapi/v1/txt2img", {**TINY, "alwayson_scripts": {
            "ADetailer": {"args": [adetailer_unit(ad_model="nope.pt")]}}}),
        "fails: override with unknown checkpoint": ("/sdapi/v1/txt2img", {
            **TINY, "override_settings": {"sd_model_checkpoint": "nope"}, "override_settings_restore_afterwards": False}),
    }


def jobs(count: int, seeds: int) -> list[tuple[str, str, dict]]:
    """`count` jobs cycling through the templates in a shuffled but fixed order, each with one of `seeds`
    seeds, so each distinct payload repeats and can be checked against a fresh engine once."""
    rng = np.random.default_rng(0)
    names = sorted(templates())
    chosen = []
    for index in range(count):
        name = names[rng.integers(len(names))] if index >= len(names) else names[index]
        endpoint, payload = templates()[name]
        payload = copy.deepcopy(payload)
        if "seed" in payload:
            payload["seed"] = int(payload["seed"]) + int(rng.integers(seeds))
        chosen.append((name, endpoint, payload))
    return chosen


def serve(engine, endpoint: str, payload: dict) -> tuple[str, list[str]]:
    """("ok", pixel hashes) or ("error", [the error line])."""
    from handler import serve_job
    from tests.fuzzing import envelope, pixel_hash

    output = serve_job(envelope(endpoint, payload), engine)
    if "error" in output:
        return "error", [output["error"]]
    images = output.get("images") or ([output["image"]] if "image" in output else [])
    return "ok", [pixel_hash(image) for image in images]


def slope(values: list[int]) -> float:
    """Least-squares slope of `values` against their index (bytes per job)."""
    return float(np.polyfit(np.arange(len(values)), np.asarray(values, dtype=np.float64), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--warm-up", type=int, default=100, help="jobs left out of the memory fit")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per template (distinct payloads)")
    parser.add_argument("--models", help="a folder for the demo models (reused when already written)")
    parser.add_argument("--heap-gb", type=float, default=8.0)
    args = parser.parse_args()
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger().setLevel(logging.CRITICAL)

    from engine import Engine

    models = demo_models(args.models)
    write_embeddings(models)
    cap_heap(args.heap_gb)
    engine = Engine.from_models_dir(models, device="cpu", default_checkpoint="tiny-sd15")
    plan = jobs(args.jobs, args.seeds)
    # json of (endpoint, payload) → the payload and what each of its jobs gave: (kind, pixel hashes or error).
    distinct: dict[str, tuple[str, str, dict]] = {}
    served: dict[str, list[tuple[str, list[str]]]] = collections.defaultdict(list)
    outcomes: collections.Counter = collections.Counter()
    memory, started = [], time.perf_counter()
    for index, (name, endpoint, payload) in enumerate(plan):
        kind, detail = serve(engine, endpoint, payload)
        if (kind == "error") == name.startswith("fails:"):
            outcomes["failed as meant" if kind == "error" else "images"] += 1
        else:
            outcomes[f"UNEXPECTED {kind}: {name}: {detail[0][:100] if detail else ''}"] += 1
        key = json.dumps([endpoint, payload], sort_keys=True)
        distinct[key] = (name, endpoint, payload)
        served[key].append((kind, detail))
        memory.append(rss_bytes())
        if (index + 1) % 50 == 0:
            print(f"{index + 1} jobs, RSS {memory[-1] / 2**20:.0f} MiB, {time.perf_counter() - started:.0f} s",
                  flush=True)
    elapsed = time.perf_counter() - started
    after_warm_up = memory[args.warm_up:]

    # Each distinct payload once on a fresh engine; every successful soak result must equal it.
    fresh = Engine.from_models_dir(models, device="cpu", default_checkpoint="tiny-sd15")
    compared, differing = 0, collections.Counter()
    for key, (name, endpoint, payload) in distinct.items():
        successes = [detail for kind, detail in served[key] if kind == "ok"]
        if not successes:
            continue
        reference = serve(fresh, endpoint, payload)
        for detail in successes:
            compared += 1
            if ("ok", detail) != reference:
                differing[name] += 1

    print(machine_line())
    print(f"jobs: {len(plan)} in {elapsed:.0f} s ({len(distinct)} distinct payloads, "
          f"{sum(name.startswith('fails:') for name, _, _ in plan)} meant to fail); outcomes: {dict(outcomes)}")
    print(f"RSS: {memory[0] / 2**20:.0f} MiB after job 1, {memory[args.warm_up - 1] / 2**20:.0f} MiB after "
          f"job {args.warm_up}, {memory[-1] / 2**20:.0f} MiB after job {len(memory)}; "
          f"max {max(after_warm_up) / 2**20:.0f} MiB after the warm-up")
    print(f"RSS slope after job {args.warm_up}: {slope(after_warm_up):.0f} bytes/job "
          f"(whole run: {slope(memory):.0f} bytes/job)")
    print(f"bit-identical to a fresh engine: {compared - len(differing)} of {compared} successful results"
          + (f"; differing: {collections.Counter(differing)}" if differing else ""))


if __name__ == "__main__":
    main()
