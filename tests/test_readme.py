"""The README's licence tables cover every dependency and every model download_models.py fetches."""

import fnmatch
import re
from pathlib import Path

from tests.test_download_models import dm


REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"### {title}")
    end = README.find("\n#", start + 1)
    return README[start : end if end != -1 else None]


def first_cells(table: str) -> list[str]:
    """The first cell of every table row, split at commas, without backticks."""
    cells = []
    for line in table.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cell = line.split("|")[1]
            cells += [name.strip().strip("`").strip() for name in re.split(r",|\(", cell)]
    return [cell for cell in cells if cell]


def requirement_names(*files: str) -> list[str]:
    names = []
    for file in files:
        for line in (REPO / file).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                names.append(re.split(r"[=<>~!\[ ]", line, maxsplit=1)[0].lower())
    return names


def test_every_runtime_dependency_has_its_licence_listed():
    listed = {name.lower() for name in first_cells(section("Runtime dependencies"))}
    missing = [name for name in requirement_names("requirements.txt", "requirements-nodeps.txt")
               if name not in listed]
    assert not missing, f"add these to the README's licence table: {missing}"


def test_every_downloadable_model_has_its_licence_listed():
    patterns = first_cells(section("Models `download_models.py` fetches"))
    items = [item for item in dm.MANIFEST if item.kind != "config"]
    missing = [item.name for item in items if not any(fnmatch.fnmatch(item.name, p) for p in patterns)]
    assert not missing, f"add these to the README's model licence table: {missing}"
