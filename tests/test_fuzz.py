"""Hostile jobs through the RunPod door on the tiny demo models (issue 10 item 12): every case ends in images (or
the endpoint's answer) or one clear error line, and the worker then serves a normal request pixel for pixel.

A few hundred cases here; `bench/fuzz.py` runs thousands with the same strategies (tests/fuzzing.py).
"""

import copy
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from tests.fuzzing import (
    FUZZ_LIMITS,
    MUTATIONS,
    Outcome,
    alwayson_junk,
    arbitrary_jobs,
    envelope,
    mutated_calls,
    reference_pixels,
    run_case,
    warm_up,
)
from tests.hostile import base_calls, hostile_images, masks


# Every failure is collected, not raised, so one run reports all of them without hypothesis shrinking each.
FUZZ = settings(max_examples=100, deadline=None, database=None, phases=[Phase.generate],
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def engine(sd15_engine):
    """The session engine with the fuzzing limits (tests/fuzzing.py); its options are put back afterwards, so
    whatever a case changed cannot reach other tests."""
    original = sd15_engine.settings
    options = sd15_engine.handle("GET", "/sdapi/v1/options", {})
    warm_up(sd15_engine)
    sd15_engine.settings = replace(original, **FUZZ_LIMITS)
    try:
        yield sd15_engine
    finally:
        sd15_engine.settings = original
        sd15_engine.handle("POST", "/sdapi/v1/options", options)


@pytest.fixture(scope="module")
def reference(engine):
    return reference_pixels(engine)


def run_all(engine, reference, labelled_jobs) -> dict[str, list[str]]:
    """Serve each (label, job); failures by detail, then whether the normal request still gives its pixels."""
    failures: dict[str, list[str]] = {}
    for label, job in labelled_jobs:
        outcome = run_case(engine, job)
        if outcome.kind == "failure":
            failures.setdefault(outcome.detail, []).append(label)
    if reference_pixels(engine) != reference:
        failures["the normal request gives other pixels after these cases"] = ["(all)"]
    return failures


def report(failures: dict[str, list[str]]) -> str:
    return "\n".join(f"{len(labels)} × {detail} (e.g. {labels[0]})" for detail, labels in failures.items())


def fuzz(engine, reference, strategy, seed: int) -> dict[str, list[str]]:
    cases = []

    @hypothesis_seed(seed)
    @FUZZ
    @given(case=strategy)
    def collect(case):
        cases.append(copy.deepcopy(case))

    collect()
    return run_all(engine, reference, cases)


def test_the_oracle_tells_a_clear_error_from_a_leak(engine):
    """The judge itself: images pass, a one-line RequestError passes, an absolute path or a second line fails."""
    endpoint, payload = base_calls()["txt2img"]
    assert run_case(engine, envelope(endpoint, payload)).kind == "images"
    assert run_case(engine, envelope(endpoint, {**payload, "steps": "many"})) == Outcome(
        "error", "steps: must be an integer, got 'many'")
    models = str(engine.settings.models_dir)
    from tests.fuzzing import _judge_error, internal_fragments

    assert _judge_error(f"lora: not in {models}/Lora", internal_fragments(engine.settings.models_dir)).kind == "failure"
    assert _judge_error("a\nb", ()).kind == "failure"
    assert _judge_error("internal error: KeyError: 'x'", ()).kind == "failure"


def test_mutated_payloads_end_in_images_or_one_clear_error_line(engine, reference):
    # Hostile images have their own test below; bench/fuzz.py mixes them into mutations too.
    no_images = tuple(operation for operation in MUTATIONS if operation != "image")
    failures = fuzz(engine, reference, mutated_calls(no_images), seed=12)
    assert not failures, report(failures)


def test_junk_in_alwayson_scripts_and_arbitrary_json_end_in_one_clear_error_line(engine, reference):
    failures = fuzz(engine, reference, alwayson_junk() | arbitrary_jobs(), seed=13)
    assert not failures, report(failures)


def hostile_image_jobs():
    """Every hostile image in every door's image field; every odd mask on the inpainting call."""
    calls = base_calls()
    for name, image in hostile_images().items():
        endpoint, payload = calls["img2img"]
        yield f"{name} as init image", envelope(endpoint, {**payload, "init_images": [image]})
        # A ControlNet unit's image goes through the same preprocessing as /controlnet/detect's, which is cheaper.
        endpoint, payload = calls["controlnet detect"]
        yield f"{name} to controlnet/detect", envelope(endpoint, {**payload, "controlnet_input_images": [image]})
        for door in ("extras", "png-info"):
            endpoint, payload = calls[door]
            yield f"{name} to {door}", envelope(endpoint, {**payload, "image": image})
    for name, mask in masks().items():
        endpoint, payload = copy.deepcopy(calls["inpaint"])
        yield name, envelope(endpoint, {**payload, "mask": mask})


def test_hostile_images_end_in_images_or_one_clear_error_line(engine, reference):
    failures = run_all(engine, reference, hostile_image_jobs())
    assert not failures, report(failures)
