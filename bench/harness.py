"""What bench/fuzz.py, bench/soak.py and bench/concurrency.py share: the repo on the import path, the tiny demo
models, the machine line RESULTS.md records, resident memory, and a cap on the heap so a runaway case fails
with MemoryError instead of taking the shared machine down."""

import os
import platform
import resource
import sys
import tempfile
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# As tests/conftest.py: nothing reaches the network.
for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "YOLO_OFFLINE": "1",
                   "YOLO_AUTOINSTALL": "false"}.items():
    os.environ.setdefault(key, value)


def demo_models(folder: str | None) -> Path:
    """`folder` if it already holds the demo models, else the demo models written there (or in a temp folder)."""
    from engine.demo.models import DEMO_MARKER, write_demo_models

    root = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="bench-models-"))
    if not (root / DEMO_MARKER).is_file():
        root.mkdir(parents=True, exist_ok=True)
        write_demo_models(root)
    return root


def cap_heap(gigabytes: float) -> None:
    """Limit the process's data segment (heap and anonymous mappings): allocations past it raise."""
    limit = int(gigabytes * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def rss_bytes() -> int:
    """Resident set size now (Linux /proc; ru_maxrss is only the peak)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def machine_line() -> str:
    import torch

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
        f"python {platform.python_version()}, load average {load}"
    )
