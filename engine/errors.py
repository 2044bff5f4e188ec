"""Errors the engine raises on purpose; each renders as one line a client can act on."""


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
