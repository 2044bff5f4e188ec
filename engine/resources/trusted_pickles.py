"""The opt-in allowlist for model files that run code when loaded: ultralytics reads its `.pt` detectors as
full pickles (`torch.load(weights_only=False)`), so a planted file would run whatever it holds. Every other
loader reads safetensors, ONNX, or tensor-only pickles (`weights_only=True`) and needs no list.

With `TRUSTED_PICKLES` set, such a file loads only when its sha256 is listed in a `sha256sum`-style file
(`<64 hex digits>  <name>` per line, `#` comments); `download_models.py` writes one for what it fetched.
"""

import hashlib
import re
import threading
from pathlib import Path

from engine.errors import ModelFileError


# The list `download_models.py` writes in the models folder (and `TRUSTED_PICKLES=1` reads).
DEFAULT_LIST_NAME = "trusted_pickles.sha256"
_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(.*)$")


def read_digests(listing: Path) -> frozenset[str]:
    """The sha256 digests a list names (lower case).

    Raises:
        ValueError: the list is missing or a line is not `<sha256>  <name>` (a worker must not start with a
            list it cannot read: it would refuse every detector, or trust one by mistake).
    """
    try:
        text = listing.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"TRUSTED_PICKLES: cannot read {listing}: {exc.strerror or exc}") from None
    digests = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"TRUSTED_PICKLES: {listing} line {number} is not '<sha256>  <file name>': {line!r}")
        digests.add(match.group(1).lower())
    return frozenset(digests)


class TrustedPickles:
    """Checks code-running pickles against the allowlist; with no list (the default) every file passes.
    Digests of checked files are remembered by (path, size, modification time). Thread-safe."""

    def __init__(self, listing: Path | None, root: Path | None = None):
        """Args:
        listing: the `sha256sum`-style list; None: no allowlist (every file in the models folder trusted).
        root: the models folder, for file names in errors.
        """
        self.listing = listing
        self._digests = read_digests(listing) if listing is not None else None
        self._root = root
        self._known: dict[tuple[Path, int, int], str] = {}
        self._lock = threading.Lock()

    def check(self, path: Path, field: str) -> None:
        """Raise unless `path` may be unpickled.

        Raises:
            ModelFileError: naming `field` and the file: its sha256 is not in the list.
        """
        if self._digests is None:
            return
        digest = self._sha256(Path(path))
        if digest not in self._digests:
            raise ModelFileError(
                field,
                f"{self._name(Path(path))} is a pickle that runs code when loaded and its sha256 {digest} is not "
                f"in the trusted list {self.listing}; add '{digest}  {Path(path).name}' there to trust it",
            )

    def _sha256(self, path: Path) -> str:
        stat = path.stat()
        key = (path.resolve(), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._known.get(key)
        if known is not None:
            return known
        hasher = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                hasher.update(block)
        digest = hasher.hexdigest()
        with self._lock:
            self._known[key] = digest
        return digest

    def _name(self, path: Path) -> str:
        if self._root is not None:
            try:
                return str(path.resolve().relative_to(Path(self._root).resolve()))
            except ValueError:
                pass
        return path.name
