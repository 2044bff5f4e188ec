"""The doors' start-up: imports run without the cyclic collector, which is back on (and the imports frozen)
once they are done."""

import gc
import subprocess
import sys
from pathlib import Path

from engine.startup import imports_without_collection


REPO = Path(__file__).resolve().parents[1]


def test_the_collector_is_paused_inside_and_restored_after():
    assert gc.isenabled()
    with imports_without_collection():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.unfreeze()  # this test process keeps collecting its own objects


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    try:
        with imports_without_collection():
            pass
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()


def test_importing_the_handler_leaves_the_collector_on_with_the_imports_frozen():
    """In a fresh interpreter, as RunPod starts the worker: torch and diffusers were imported inside the block."""
    code = ("import gc, sys; import handler; "
            "print(gc.isenabled(), gc.get_freeze_count() > 100_000, 'diffusers' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                           timeout=300).stdout.split()
    assert shown == ["True", "True", "True"]
