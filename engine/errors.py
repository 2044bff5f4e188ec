"""Errors the engine raises on purpose; each renders as one line a client can act on. Any other exception is a
bug or a fault: clients get `internal_error_message`, the log gets the traceback."""

import uuid


class EngineError(Exception):
    """Base class for errors that are reported to the client as `{"error": str(exc)}`."""


class RequestError(EngineError):
    """The request is wrong: names the offending field and what it accepts."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFoundError(RequestError):
    """A named model, sampler, upscaler, endpoint... does not exist; the message lists the valid names."""


class UnsupportedError(RequestError):
    """The request asks for something A1111 accepts that this worker does not implement (yet)."""


def choices(names) -> str:
    """Render valid names for an error message, sorted and quoted."""
    listed = ", ".join(repr(n) for n in sorted(names, key=str))
    return listed or "(none available)"


class ModelFileError(EngineError):
    """A model file in the models folder cannot be loaded (corrupt, truncated, unreadable): names the file
    relative to the models folder. Not the client's fault: answered like A1111's failed model loads (500)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class OutOfMemory(EngineError):
    """The device ran out of memory even when the request was retried with lower-memory settings."""


def new_request_id() -> str:
    """An id that ties a client's error line to the traceback in the log (HTTP and CLI requests; RunPod jobs
    have their own)."""
    return uuid.uuid4().hex[:12]


def internal_error_message(request_id: str, kind: str = "request id") -> str:
    """What a client is told about an unexpected exception: its text may hold internal paths and values, so
    only the id under which the log holds the traceback."""
    return f"internal error ({kind} {request_id}); the worker's log has the details"
