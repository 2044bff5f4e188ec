"""Logging for the doors (CLI, RunPod handler, HTTP server): our format, and third-party noise kept quiet.

Called once by each composition root, never at import: a program embedding the library keeps its own setup.
"""

import logging
import warnings


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _DropMessages(logging.Filter):
    """Drops records whose message contains one of `fragments`."""

    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def setup_logging(verbose: bool = False, fmt: str = LOG_FORMAT) -> None:
    """Configure the root logger and silence what is not the operator's concern:

    - diffusers' "modules … that should be kept in float32: []" on every single-file load (its own loader
      casts with `to()`; with an empty list nothing is affected);
    - diffusers' "Loading pipeline components" progress bars (the worker logs one line per load);
    - torchsde's "Should have tb<=t1" warnings: the Brownian tree is queried at the schedule's own end points,
      which differ from its float64 bounds only in the last digits (k-diffusion in A1111 warns the same way);
    - torch's "`torch.jit.script` is deprecated" FutureWarning, raised when spandrel_extra_arches' CodeFormer is
      imported (its module decorates a function with `torch.jit.script`): a notice for that package's authors.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt)
    logging.getLogger("diffusers.models.modeling_utils").addFilter(
        _DropMessages("that should be kept in float32: []")
    )
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"Should have t[ab][<>]=t[01]", module=r"torchsde\.")
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
