"""`import handler` loads only what the default txt2img request needs: every optional capability's library
is imported on first use (or at warm-up when a `PRELOAD_*` setting asks), so a worker's cold start does not
pay for detectors, face analysis, upscaler architectures or the HTTP server it may never use."""

import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]

# Libraries the default request never touches, by the capability that needs them. peft is not listed:
# diffusers itself imports it whenever it is installed (`diffusers/hooks/layerwise_casting.py`), so
# `from diffusers import StableDiffusionPipeline` pays for it too.
OPTIONAL_LIBRARIES = {
    "ultralytics": "ADetailer detection",
    "insightface": "InstantID face analysis",
    "onnxruntime": "InstantID face analysis",
    "spandrel": "ESRGAN upscalers and face restorers",
    "spandrel_extra_arches": "CodeFormer",
    "facexlib": "face restoration helpers",
    "controlnet_aux": "ControlNet preprocessors",
    "mediapipe": "ControlNet mediapipe_face",
    "dynamicprompts": "the Dynamic Prompts script",
    "fastapi": "the HTTP server",
    "uvicorn": "the HTTP server",
    "starlette": "the HTTP server",
    "runpod": "the RunPod SDK (imported by `python handler.py`, not by `import handler`)",
}


def modules_after(statement: str) -> set[str]:
    """The top-level package names in `sys.modules` of a fresh interpreter after running `statement`."""
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=600
    )
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_handler_import_leaves_optional_libraries_unloaded():
    loaded = modules_after("import handler")
    assert "diffusers" in loaded  # the probe sees what the import really loaded
    early = {name: why for name, why in OPTIONAL_LIBRARIES.items() if name in loaded}
    assert not early, f"`import handler` imported libraries of optional capabilities: {early}"
