"""The CPU thread count torch computes with, held fixed: a float sum split over another number of threads rounds
differently, so the same seed would give other pixels.

`torch.set_num_threads` sets the calling thread's count and the default of threads started later, while
threads already running keep theirs. ultralytics' first CPU predict calls it (`select_device` sets
`min(8, cpu_count - 1)` "for cpu training"), so without care a worker's pixels depend on which thread ran an
ADetailer request first. The engine sets its count on the thread of every job (`use_torch_threads`) and puts
it back after third-party calls known to change it (`keep_torch_threads`).
"""

import contextlib
from collections.abc import Iterator

import torch


def use_torch_threads(count: int) -> None:
    """Compute with `count` threads on the calling thread (and, as torch does, on threads started later)."""
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Whatever the body sets, the calling thread's count afterwards is the one it had before."""
    count = torch.get_num_threads()
    try:
        yield
    finally:
        use_torch_threads(count)
