"""Many callers at once (issue 10 item 14): the HTTP server under 8 concurrent clients and the library from several
threads give exactly the pixels of the same requests served one after another, and `GET /sdapi/v1/progress`
answers promptly while a job runs. `bench/concurrency.py` runs the same at a larger scale."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from engine.server import create_app, serve_in_background
from tests.fuzzing import pixel_hash
from tests.hostile import TINY, base_calls


CLIENTS = 8


def mixed_calls(count: int) -> list[tuple[str, dict]]:
    """`count` different calls: txt2img with distinct seeds and samplers, img2img, extras."""
    samplers = ("Euler", "Euler a", "DPM++ 2M", "DDIM")
    calls = [("/sdapi/v1/txt2img", {**TINY, "steps": 2, "seed": 100 + index,
                                         "sampler_name": samplers[index % len(samplers)]})
             for index in range(count - 2)]
    return [*calls, base_calls()["img2img"], base_calls()["extras"]]


def hashes(body: dict) -> list[str]:
    images = body.get("images") or [body["image"]]
    return [pixel_hash(image) for image in images]


@pytest.fixture(scope="module")
def http(sd15_engine):
    with (serve_in_background(create_app(sd15_engine)) as url,
          httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_connections=2 * CLIENTS)) as client):
        yield client


def post(http, endpoint: str, payload: dict) -> list[str]:
    response = http.post(endpoint, json=payload)
    assert response.status_code == 200, response.text
    return hashes(response.json())


def test_eight_concurrent_http_clients_get_the_pixels_of_sequential_requests(http):
    calls = mixed_calls(CLIENTS)
    sequential = [post(http, endpoint, payload) for endpoint, payload in calls]
    with ThreadPoolExecutor(CLIENTS) as pool:
        concurrent = list(pool.map(lambda call: post(http, *call), calls))
    assert concurrent == sequential
    assert len({tuple(h) for h in sequential}) == len(calls)  # distinct requests, so a mix-up would show


def test_library_threads_get_the_pixels_of_sequential_calls(sd15_engine):
    calls = mixed_calls(4)
    sequential = [hashes(sd15_engine.handle("POST", endpoint, payload)) for endpoint, payload in calls]
    with ThreadPoolExecutor(len(calls)) as pool:
        concurrent = list(pool.map(lambda call: hashes(sd15_engine.handle("POST", *call)), calls))
    assert concurrent == sequential


def test_progress_answers_promptly_while_a_job_runs(http):
    """Polled throughout 12-step jobs (one runs, two wait in the queue), every answer comes within a second
    and shows the running job's progress in (0, 1] once sampling has started."""
    job = {**TINY, "steps": 12}
    done = threading.Event()

    def run_jobs():
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda seed: post(http, "/sdapi/v1/txt2img", {**job, "seed": seed}), range(3)))
        done.set()

    runner = threading.Thread(target=run_jobs)
    runner.start()
    latencies, during = [], []
    try:
        while not done.is_set():
            started = time.perf_counter()
            progress = http.get("/sdapi/v1/progress").json()
            latencies.append(time.perf_counter() - started)
            if progress["state"]["sampling_step"] > 0:
                during.append(progress)
            time.sleep(0.02)
    finally:
        runner.join(timeout=300)
    assert during, "no poll saw a job sampling"
    # Between the last step and the end of the VAE decode the job shows progress 1 (as A1111).
    outside = [(p["progress"], p["state"]) for p in during if not (0 < p["progress"] <= 1 and p["state"]["job_count"])]
    assert not outside, outside[:3]
    assert any(p["progress"] < 1 for p in during)
    assert max(latencies) < 1.0, f"slowest progress answer {max(latencies):.2f} s"
