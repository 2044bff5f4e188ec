"""Payload files for the CLI: read them as clients write them, and adapt a client's payload to local models.

A payload file holds a RunPod job (`{"input": …}`), its input (an envelope or a bare txt2img payload), or a
document with the job in a fenced ```json block, as RunPod workers' docs and this project's seed payloads
are written. Client payloads often carry placeholder images ("base64 encoded image content") and name
checkpoints a local models folder does not have; `fill_placeholder_images` and `use_checkpoint` adapt them
for a local run, explicitly, on the command line.
"""

import base64
import json
import re
from pathlib import Path
from typing import Any

from engine.errors import RequestError


# A fenced JSON block in a Markdown or text document: the first one is the job.
JSON_BLOCK = re.compile(r"```json\s*\n(.*?)\n\s*```", re.DOTALL)
# Fields that carry an input image in A1111 and its extensions' payloads (masks are left alone: a face photo
# is no mask). `init_images` holds a list of them.
IMAGE_FIELDS = frozenset({"image", "input_image", "init_images", "source_image"})


def read_job_input(path: Path) -> Any:
    """The job input in `path`: JSON, or the first ```json block of a document; `{"input": …}` unwrapped."""
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        block = JSON_BLOCK.search(text)
        if block is None:
            raise RequestError(str(path), f"is neither JSON nor a document with a ```json block ({exc})") from None
        try:
            data = json.loads(block.group(1))
        except json.JSONDecodeError as inner:
            raise RequestError(str(path), f"its ```json block is not valid JSON ({inner})") from None
    return data["input"] if isinstance(data, dict) and "input" in data else data


def fill_placeholder_images(value: Any, image_file: Path) -> tuple[Any, int]:
    """Replace every image field whose value is not a base64 image by `image_file`'s bytes.

    Returns:
        The payload with placeholders replaced (a new object; `value` is not changed) and how many were.
    """
    encoded = base64.b64encode(image_file.read_bytes()).decode()
    replaced = 0

    def walk(node: Any, key: str | None = None) -> Any:
        nonlocal replaced
        if isinstance(node, dict):
            return {name: walk(item, name) for name, item in node.items()}
        if isinstance(node, list):
            return [walk(item, key) for item in node]
        if key in IMAGE_FIELDS and isinstance(node, str) and not _is_base64_image(node):
            replaced += 1
            return encoded
        return node

    return walk(value), replaced


def use_checkpoint(job_input: Any, checkpoint: str) -> Any:
    """The job input with its txt2img/img2img payload set to run on `checkpoint`
    (`override_settings.sd_model_checkpoint`, where A1111 clients name it)."""
    if not isinstance(job_input, dict):
        return job_input
    payload = job_input.get("payload", job_input) if "api" in job_input else job_input
    if not isinstance(payload, dict):
        return job_input
    overrides = payload.get("override_settings") if isinstance(payload.get("override_settings"), dict) else {}
    updated = {**payload, "override_settings": {**overrides, "sd_model_checkpoint": checkpoint}}
    return {**job_input, "payload": updated} if "api" in job_input else updated


def _is_base64_image(text: str) -> bool:
    from engine.imaging.decode import open_image

    try:
        open_image(text, "image").close()
    except RequestError:
        return False
    return True
