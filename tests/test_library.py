"""The library door: `from engine import Engine`, a payload dict in, images and info out; thread-safe."""

import json
import threading

import numpy as np

from engine import Engine


PAYLOAD = {
    "prompt": "a lighthouse",
    "seed": 11,
    "steps": 2,
    "width": 64,
    "height": 64,
    "sampler_name": "Euler",
}


def test_engine_runs_a_payload_dict(demo_models):
    engine = Engine.from_models_dir(demo_models, device="cpu")
    result = engine.txt2img(PAYLOAD)
    assert result.images[0].size == (64, 64)
    info = json.loads(result.info)
    # No default configured: like A1111, the first checkpoint by name.
    first = sorted(engine.catalog.checkpoints(), key=lambda entry: entry.name.lower())[0]
    assert info["sd_model_name"] == first.name_for_extra
    assert info["steps"] == 2 and info["seed"] == 11
    assert result.response()["parameters"]["prompt"] == "a lighthouse"


def test_concurrent_callers_get_the_same_pixels_as_one_caller(sd15_engine):
    expected = np.asarray(sd15_engine.txt2img(PAYLOAD).images[0])
    results, errors = [], []

    def call():
        try:
            results.append(np.asarray(sd15_engine.txt2img(PAYLOAD).images[0]))
        except Exception as exc:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 3
    assert all(np.array_equal(image, expected) for image in results)
