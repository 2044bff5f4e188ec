"""Wildcard files (`__name__` → a line of `name.txt`): where they are, and the two ways A1111 extensions fill them.

Dynamic Prompts (adieyal/sd-dynamic-prompts, MIT) hands the folder to the `dynamicprompts` library's
`WildcardManager`; the `Simple wildcards` script (AUTOMATIC1111/stable-diffusion-webui-wildcards,
`scripts/wildcards.py`; its repository has no licence file, so only its behaviour is reproduced) picks a
line itself with `random.Random(seed)`. Both leave an unknown `__name__` in the prompt as text (and log a
warning); here it is an error naming the field.
"""

import random
from pathlib import Path

from engine.errors import NotFoundError, choices


SIMPLE_WILDCARDS_TITLE = "Simple wildcards"  # the script's title, its `alwayson_scripts` key
WILDCARDS_FOLDER = "wildcards"
# Where an A1111 install keeps them, relative to its models/ folder: Dynamic Prompts', then Simple wildcards'.
EXTENSION_FOLDERS = (
    "../extensions/sd-dynamic-prompts/wildcards",
    "../extensions/stable-diffusion-webui-wildcards/wildcards",
)


def wildcard_folder(models_dir: Path, configured: Path | None = None) -> Path:
    """The folder wildcards are read from: `WILDCARDS_DIR` when set, else `models/wildcards`, else the
    wildcards folder of an A1111 install's Dynamic Prompts or Simple wildcards extension beside `models/`
    (the first that exists); `models/wildcards` when none does."""
    if configured is not None:
        return Path(configured)
    own = Path(models_dir) / WILDCARDS_FOLDER
    if own.is_dir():
        return own
    for relative in EXTENSION_FOLDERS:
        candidate = Path(models_dir) / relative
        if candidate.is_dir():
            return candidate.resolve()
    return own


class UnknownWildcard(LookupError):
    """A `__name__` with no file; the caller turns it into a `NotFoundError` naming its request field."""

    def __init__(self, name: str, folder: Path | None, known: list[str]):
        super().__init__(name)
        self.name, self.folder, self.known = name, folder, known
        self.field = "prompt"  # the request field whose text named it, set by whoever knows

    def as_request_error(self) -> NotFoundError:
        listed = choices(self.known) if self.known else "none"
        return NotFoundError(self.field, f"no wildcard file for __{self.name}__ in {self.folder}; wildcards there: "
                                    f"{listed}")


def simple_wildcards(text: str, seed: int, folder: Path) -> str:
    """The Simple wildcards script on one prompt: `text` split at "__", every piece that is non-empty and has
    no space looked up as `<folder>/<piece>.txt` and replaced by a line of it drawn with `Random(seed)`; the
    "__" themselves are dropped. As in the script, any piece is looked up (the text between wildcards too),
    and pieces without a file stay as they are, except a `__name__` wildcard, which is an error here.

    Raises:
        UnknownWildcard: a `__name__` (a piece closed by "__") with no file.
    """
    generator = random.Random(seed)
    pieces = text.split("__")
    replaced = []
    for index, piece in enumerate(pieces):
        if " " in piece or not piece:
            replaced.append(piece)
            continue
        path = _wildcard_file(folder, piece)
        if path is not None:
            replaced.append(generator.choice(path.read_text(encoding="utf8").splitlines()))
        elif index % 2 == 1 and index < len(pieces) - 1:
            known = sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.txt"))
            raise UnknownWildcard(piece, folder, known if folder.is_dir() else [])
        else:
            replaced.append(piece)
    return "".join(replaced)


def _wildcard_file(folder: Path, name: str) -> Path | None:
    """`<folder>/<name>.txt` if it exists and stays inside the folder (a name may hold sub-folders)."""
    path = folder / f"{name}.txt"
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return None
    return path if path.is_file() else None
