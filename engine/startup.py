"""Process start-up for the worker's doors (RunPod handler, CLI): imports without the cyclic garbage collector.

Importing torch, diffusers and transformers creates about a million Python objects and almost no cyclic
garbage. With the collector on, every allocation threshold crossed during the imports walks the objects made
so far, and a full collection walks all of them: about 15 % of the worker's import time, for nothing
(`bench/imports.py`). Library users keep their interpreter's settings: only the doors use this.
"""

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def imports_without_collection() -> Iterator[None]:
    """Pause the cyclic collector for the block, then move everything alive to the permanent generation.

    `gc.freeze()` keeps the imported modules' objects out of every later collection too, so the collections that
    run while jobs are served (each request allocates and frees many tensors and dicts) stay short.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
