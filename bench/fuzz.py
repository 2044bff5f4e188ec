"""Fuzz the worker (issue 10 item 12): thousands of hostile RunPod jobs on the tiny demo models.

Every job must end in images (or the endpoint's answer) or one clear error line, and the worker must keep
serving a normal request pixel for pixel. Prints the cases run and every distinct failure (by exception type
and the line of our code it passed through), with one example job label each.

    OMP_NUM_THREADS=1 python bench/fuzz.py --cases 5000 [--seed 1] [--models DIR]
"""

import argparse
import collections
import logging
import time
from dataclasses import replace

from harness import cap_heap, demo_models, machine_line
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--models", help="a folder for the demo models (reused when already written)")
    parser.add_argument("--check-every", type=int, default=250, help="cases between normal-request checks")
    parser.add_argument("--heap-gb", type=float, default=8.0, help="cap on the heap (RLIMIT_DATA)")
    parser.add_argument("--verbose", action="store_true", help="print every case")
    args = parser.parse_args()
    # The oracle reads the worker's ERROR records itself; nothing is printed.
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger().setLevel(logging.ERROR)

    from engine import Engine
    from tests.fuzzing import FUZZ_LIMITS, cases, reference_pixels, run_case, warm_up

    models = demo_models(args.models)
    cap_heap(args.heap_gb)
    engine = Engine.from_models_dir(models, device="cpu", default_checkpoint="tiny-sd15")
    warm_up(engine)
    engine.settings = replace(engine.settings, **FUZZ_LIMITS)
    reference = reference_pixels(engine)
    kinds: collections.Counter = collections.Counter()
    failures: dict[str, list[str]] = collections.defaultdict(list)
    lost_service: list[int] = []
    started = time.perf_counter()

    @hypothesis_seed(args.seed)
    @settings(max_examples=args.cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def fuzz(case):
        label, job = case
        case_started = time.perf_counter()
        before = engine.handle("GET", "/sdapi/v1/options", {})
        outcome = run_case(engine, job)
        kinds[outcome.kind] += 1
        if outcome.kind == "failure":
            failures[outcome.detail].append(label)
        changed = sorted(key for key, value in engine.handle("GET", "/sdapi/v1/options", {}).items()
                         if before.get(key) != value)
        if changed:
            # Only a successful request with override_settings_restore_afterwards false may keep settings.
            payload = job.get("input", {}).get("payload") if isinstance(job.get("input"), dict) else None
            keeps = isinstance(payload, dict) and payload.get("override_settings_restore_afterwards") is False
            if not (keeps and outcome.kind == "images"):
                kinds["changed /options"] += 1
                failures[f"{outcome.kind} changed /options {changed}"].append(label)
            engine.handle("POST", "/sdapi/v1/options", before)
        if args.verbose:
            print(f"{sum(kinds.values()):5d} {time.perf_counter() - case_started:5.2f}s {outcome.kind:8s} {label} -> "
                  f"{outcome.detail[:120]}", flush=True)
        done = sum(kinds.values())
        if done % args.check_every == 0:
            if reference_pixels(engine) != reference:
                lost_service.append(done)
            print(f"{done} cases, {kinds['failure']} failures, {time.perf_counter() - started:.0f} s", flush=True)

    fuzz()
    if reference_pixels(engine) != reference:
        lost_service.append(sum(kinds.values()))
    elapsed = time.perf_counter() - started
    print(machine_line())
    print(f"cases: {sum(kinds.values())} in {elapsed:.0f} s; outcomes: {dict(sorted(kinds.items()))}")
    print(f"normal request after the cases: {'changed at ' + str(lost_service) if lost_service else 'identical'}")
    print(f"failures: {kinds['failure']} cases, {len(failures)} distinct")
    for detail, labels in sorted(failures.items(), key=lambda item: -len(item[1])):
        print(f"- {len(labels)} × {detail}\n    e.g. {labels[0]}")


if __name__ == "__main__":
    main()
