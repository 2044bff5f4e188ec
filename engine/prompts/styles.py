"""A1111's prompt styles: `styles.csv` files read as A1111 reads them, and style text merged into prompts.

Behaviour reproduced from AUTOMATIC1111/stable-diffusion-webui v1.10 `modules/styles.py` (AGPL-3.0; written
anew here): a CSV with the columns `name,prompt,negative_prompt` (an old `name,text` file works too), rows
whose name starts with `#` ignored; a style text holding `{prompt}` takes the prompt in its place, any other
is appended after ", "; styles apply in the order the request names them. No torch.
"""

import csv
import glob
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


logger = logging.getLogger(__name__)

PLACEHOLDER = "{prompt}"
STYLES_FILE_NAME = "styles.csv"


@dataclass(frozen=True)
class PromptStyle:
    """One row of a styles file."""

    name: str
    prompt: str
    negative_prompt: str
    path: str | None = None


# What A1111 applies for a name it does not know: an empty style (which still trims the prompt).
NO_STYLE = PromptStyle("None", "", "")


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """A1111 `merge_prompts`: the style's `{prompt}` replaced by the prompt, else "prompt, style" with empty
    parts (after trimming) left out."""
    if PLACEHOLDER in style_prompt:
        return style_prompt.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles(prompt: str, style_texts: Iterable[str]) -> str:
    """Merge each style text into the prompt in turn (A1111 `apply_styles_to_prompt`)."""
    for text in style_texts:
        prompt = merge_prompts(text, prompt)
    return prompt


def read_styles_csv(path: Path) -> list[PromptStyle]:
    """The styles of one A1111 styles file (utf-8, BOM allowed). Raises OSError / csv.Error / KeyError."""
    styles = []
    with open(path, encoding="utf-8-sig", newline="") as file:
        for row in csv.DictReader(file, skipinitialspace=True):
            name = row.get("name") or ""
            # A1111 skips empty rows and rows starting with a comment (its dividers between files).
            if not name or name.startswith("#"):
                continue
            prompt = row["prompt"] if "prompt" in row else row["text"]
            styles.append(PromptStyle(name, prompt or "", row.get("negative_prompt") or "", str(path)))
    return styles


def styles_file_candidates(models_dir: Path, configured: str | None) -> list[str]:
    """Where styles files are looked for: `STYLES_FILE` (paths or wildcards, comma-separated, as A1111's
    repeatable `--styles-file`), else A1111's place beside the models folder (`<webui>/styles.csv`), then
    the models folder itself."""
    if configured:
        return [part.strip() for part in configured.split(",") if part.strip()]
    return [str(models_dir.parent / STYLES_FILE_NAME), str(models_dir / STYLES_FILE_NAME)]


class StyleDatabase:
    """The styles the worker knows; files are re-read when they change (A1111 reads them at start and on its
    UI's refresh button, which a worker does not have). Thread-safe."""

    def __init__(self, paths: Sequence[str]):
        self._patterns = list(paths)
        self._lock = threading.Lock()
        self._stamp: tuple = ()
        self._styles: dict[str, PromptStyle] = {}

    def styles(self) -> dict[str, PromptStyle]:
        """Every style by name; a name defined in several files takes the last file's row, as in A1111."""
        files = self._files()
        stamp = tuple((path, os.stat(path).st_mtime_ns) for path in files if os.path.exists(path))
        with self._lock:
            if stamp != self._stamp:
                self._styles = self._load(path for path, _ in stamp)
                self._stamp = stamp
            return dict(self._styles)

    def apply(self, prompt: str, negative_prompt: str, names: Sequence[str]) -> tuple[str, str]:
        """The prompt and negative prompt with the named styles merged in (unknown names: empty styles)."""
        known = self.styles()
        chosen = [known.get(name, NO_STYLE) for name in names]
        return (
            apply_styles(prompt, [style.prompt for style in chosen]),
            apply_styles(negative_prompt, [style.negative_prompt for style in chosen]),
        )

    def unknown(self, names: Sequence[str]) -> list[str]:
        known = self.styles()
        return [name for name in names if name not in known]

    def listing(self) -> list[dict[str, str]]:
        """`GET /sdapi/v1/prompt-styles`: `{name, prompt, negative_prompt}` per style, in file order."""
        return [
            {"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt}
            for style in self.styles().values()
        ]

    def _files(self) -> list[str]:
        files = []
        for pattern in self._patterns:
            files += sorted(glob.glob(pattern)) if any(mark in pattern for mark in "*?[") else [pattern]
        return files

    @staticmethod
    def _load(paths: Iterable[str]) -> dict[str, PromptStyle]:
        styles: dict[str, PromptStyle] = {}
        for path in paths:
            try:
                for style in read_styles_csv(Path(path)):
                    styles[style.name] = style
            except (OSError, csv.Error, KeyError, UnicodeDecodeError) as exc:
                # A1111 reports the file and goes on without it.
                logger.error("cannot read styles from %s: %s", path, exc)
        return styles
