"""The fuzz harness shared by tests/test_fuzz.py (a few hundred cases in CI) and bench/fuzz.py (thousands): hypothesis
strategies that build hostile RunPod jobs, and the oracle that says whether the worker answered one acceptably.

Acceptable: images (or the endpoint's normal answer), or exactly one clear error line — no traceback, no internal
path, nothing logged as an unexpected exception. Jobs go through `handler.serve_job`, the production door.
"""

import base64
import binascii
import copy
import hashlib
import io
import logging
import math
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from PIL import Image

from tests.hostile import adetailer_unit, base_calls, controlnet_unit, hostile_images, masks


REPO = Path(__file__).resolve().parent.parent

# Values a client can send where a number, string or object is expected: bounds, overflows, NaN, wrong types.
EXTREMES = (
    -1, 0, 1, -(2**31), 2**31, 2**63, -(2**63), 10**6, 10**30, 1e308, -1e308, 1e-320,
    math.nan, math.inf, -math.inf, 0.5, -0.5, "", "-1", "1e400", "nan", "🦊" * 300, "x" * 5000, None, True, False,
    [], {}, [None], {"": None}, "None", "Automatic", "../../../etc/passwd", "/etc/passwd", "C:\\Windows",
)
# alwayson_scripts names: the ones the worker knows, in A1111's spellings, and others.
SCRIPT_NAMES = ("ADetailer", "adetailer", "controlnet", "ControlNet", "reactor", "Dynamic Prompts v2.17.1",
                "x/y/z plot", "Sampler", "Refiner", "Seed", "nope", "")
# Top-level endpoints a job may name (set-options is left out: what it changes is kept on purpose).
ENDPOINTS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/extra-single-image", "/sdapi/v1/png-info",
             "/controlnet/detect", "/sdapi/v1/progress", "/sdapi/v1/nope", "", "sdapi/v1/txt2img")

# Copied on every draw: a mutation that appends to a drawn `[]` must not change EXTREMES itself.
extremes = st.sampled_from(EXTREMES).map(copy.deepcopy)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | extremes
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def envelope(endpoint: str, payload: Any, method: str = "POST") -> dict:
    """A RunPod job calling `endpoint`; the payload is copied, so shared base payloads stay as they are."""
    return {"id": "fuzz", "input": {"api": {"method": method, "endpoint": endpoint}, "payload": copy.deepcopy(payload)}}


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a payload (dict keys and list indexes), the root excluded."""
    found = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


def _parent(payload: Any, path: tuple) -> Any:
    for key in path[:-1]:
        payload = payload[key]
    return payload


MUTATIONS = ("delete", "swap", "extreme", "extreme", "junk key", "image")


@st.composite
def mutated_calls(draw, operations: tuple[str, ...] = MUTATIONS) -> tuple[str, dict]:
    """A valid base call with one to three mutations: a field deleted, its type swapped, an extreme value, a
    junk key added, or any field replaced by a hostile image."""
    name = draw(st.sampled_from(sorted(base_calls())))
    endpoint, payload = copy.deepcopy(base_calls()[name])
    notes = []
    for _ in range(draw(st.integers(1, 3))):
        candidates = paths(payload)
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent, key = _parent(payload, path), path[-1]
        operation = draw(st.sampled_from(operations))
        if operation == "delete":
            del parent[key]
        elif operation == "swap":
            parent[key] = draw(json_values)
        elif operation == "extreme":
            parent[key] = draw(extremes)
        elif operation == "image":
            parent[key] = hostile_images()[draw(st.sampled_from(sorted(hostile_images())))]
        else:
            container = parent[key] if isinstance(parent[key], dict | list) else parent
            if isinstance(container, dict):
                container[draw(st.text(max_size=10))] = draw(json_values)
            else:
                container.append(draw(json_values))
        notes.append(f"{operation} {'.'.join(map(str, path))}")
    return f"{name}: {', '.join(notes)}", envelope(endpoint, payload)


@st.composite
def alwayson_junk(draw) -> tuple[str, dict]:
    """txt2img with junk under `alwayson_scripts`: wrong shapes, units with real keys and junk values."""
    endpoint, payload = copy.deepcopy(base_calls()["txt2img"])
    unit = draw(st.sampled_from((adetailer_unit, controlnet_unit)))()
    junk_unit = {key: draw(extremes) if draw(st.booleans()) else value for key, value in unit.items()}
    args = draw(st.sampled_from((
        [junk_unit], [True, False, junk_unit], [junk_unit] * 3, junk_unit, [draw(json_values)], draw(json_values),
    )))
    shape = draw(st.sampled_from(("args", "bare", "units")))
    value = {"args": args} if shape == "args" else args if shape == "bare" else {"units": args}
    name = draw(st.sampled_from(SCRIPT_NAMES))
    payload["alwayson_scripts"] = draw(st.sampled_from(({name: value}, {name: value, "controlnet": value}, value)))
    return f"alwayson_scripts {name!r} ({shape})", envelope(endpoint, payload)


@st.composite
def hostile_image_calls(draw) -> tuple[str, dict]:
    """Each image field of each door given a hostile image (init image, mask, ControlNet unit, extras, png-info,
    detect), masks of the wrong size or mode included."""
    image_name = draw(st.sampled_from(sorted(hostile_images())))
    image = hostile_images()[image_name]
    calls = base_calls()
    field = draw(st.sampled_from(("init", "mask", "wrong mask", "unit", "extras", "png-info", "detect", "seed 002")))
    if field in ("init", "mask", "wrong mask"):
        endpoint, payload = copy.deepcopy(calls["inpaint"])
        if field == "init":
            payload["init_images"] = [image] * draw(st.integers(1, 3))
        elif field == "mask":
            payload["mask"] = image
        else:
            image_name = draw(st.sampled_from(sorted(masks())))
            payload["mask"] = masks()[image_name]
    elif field == "unit":
        endpoint, payload = copy.deepcopy(calls["controlnet"])
        payload["alwayson_scripts"]["controlnet"]["args"][0]["image"] = image
    elif field == "seed 002":
        endpoint, payload = copy.deepcopy(calls["seed 002"])
        payload["alwayson_scripts"]["controlnet"]["args"][draw(st.integers(0, 1))]["image"] = image
    elif field == "detect":
        endpoint, payload = copy.deepcopy(calls["controlnet detect"])
        payload["controlnet_input_images"] = [image]
    else:
        endpoint, payload = copy.deepcopy(calls[field])
        payload["image"] = image
    return f"{image_name} as {field}", envelope(endpoint, payload)


@st.composite
def arbitrary_jobs(draw) -> tuple[str, dict]:
    """Any JSON as the job input, or any JSON object as the payload of any endpoint."""
    if draw(st.booleans()):
        return "arbitrary job input", {"id": "fuzz", "input": draw(json_values)}
    endpoint = draw(st.sampled_from(ENDPOINTS))
    method = draw(st.sampled_from(("POST", "POST", "GET", "post", "DELETE", "")))
    payload = draw(st.dictionaries(st.text(max_size=12), json_values, max_size=6) | json_values)
    return f"arbitrary payload to {method} {endpoint!r}", envelope(endpoint, payload, method)


cases = st.one_of(mutated_calls(), mutated_calls(), alwayson_junk(), hostile_image_calls(), arbitrary_jobs())


# --- the oracle -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """`kind`: "images", "answer" (a non-image endpoint's body), "error" (one clear line) or "failure"."""

    kind: str
    detail: str


class _UnexpectedErrors(logging.Handler):
    """Collects what the worker logs as an unexpected exception (an ERROR record carrying exc_info)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


def internal_fragments(models_dir: Path) -> tuple[str, ...]:
    """Text an error line must never show: absolute paths of the code, the interpreter or the models folder."""
    return (str(REPO), str(Path(sys.prefix)), "site-packages", str(models_dir), "Traceback", 'File "', " object at 0x")


def where(exc: BaseException) -> str:
    """The innermost frame of our own code (engine/ or handler.py) an exception passed through: its signature."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(str(REPO))]
    frame = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    return f"{Path(frame.filename).relative_to(REPO) if frame.filename.startswith(str(REPO)) else frame.filename}:" \
           f"{frame.lineno}"


def run_case(engine, job: dict) -> Outcome:
    """Serve `job` through the RunPod door and judge the answer."""
    from handler import serve_job

    catcher = _UnexpectedErrors()
    root = logging.getLogger()
    level = root.level
    root.setLevel(min(level, logging.ERROR) if level else logging.NOTSET)  # ERROR records must be made
    root.addHandler(catcher)
    try:
        output = serve_job(job, engine)
    except BaseException as exc:  # the door itself must never raise
        return Outcome("failure", f"serve_job raised {type(exc).__name__} at {where(exc)}: {_first_line(exc)}")
    finally:
        root.removeHandler(catcher)
        root.setLevel(level)
    if catcher.records:
        exc = catcher.records[0].exc_info[1]
        return Outcome("failure", f"unexpected {type(exc).__name__} at {where(exc)}: {_first_line(exc)}")
    if isinstance(output, dict) and "error" in output:
        return _judge_error(output["error"], internal_fragments(engine.settings.models_dir))
    if isinstance(output, dict) and isinstance(output.get("images"), list) and output["images"]:
        for image in output["images"]:
            try:
                base64.b64decode(image, validate=True)
            except (binascii.Error, TypeError):
                return Outcome("failure", f"an image is not base64: {str(image)[:40]!r}")
        return Outcome("images", f"{len(output['images'])} image(s)")
    warnings = output.get("warnings") if isinstance(output, dict) else None
    return Outcome("answer", f"{type(output).__name__}{' with warnings ' + str(warnings) if warnings else ''}")


def _judge_error(message: Any, forbidden: tuple[str, ...]) -> Outcome:
    """An error line is clear if it is one line, shows nothing internal and is not the catch-all answer."""
    if not isinstance(message, str) or not message.strip():
        return Outcome("failure", f"error is not a message: {message!r:.80}")
    if "\n" in message or "\r" in message:
        return Outcome("failure", f"error has {message.count(chr(10)) + 1} lines: {message[:120]!r}")
    leaked = [fragment for fragment in forbidden if fragment in message]
    if leaked:
        # Object addresses differ per case; without them one defect groups as one failure.
        return Outcome("failure", f"error shows {leaked[0]!r}: {re.sub('0x[0-9a-f]+', '0x…', message)[:160]}")
    if re.match(r"(internal|device) error", message):
        return Outcome("failure", f"unexpected error answered: {message[:160]}")
    return Outcome("error", message)


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return (text.splitlines() or [""])[0][:160]


# The fuzzed worker's limits: A1111's API defaults (512×512, 50 steps) are refused at once, and a valid but slow
# case (n_iter 10⁶) is stopped like an interrupt, so thousands of cases run in minutes on a CPU.
FUZZ_LIMITS = {"max_pixels": 128 * 128, "job_timeout_s": 2.0}


def warm_up(engine) -> None:
    """Serve every base call once, whole: the models they use are resident before cases are timed out."""
    for endpoint, payload in base_calls().values():
        outcome = run_case(engine, envelope(endpoint, payload))
        assert outcome.kind in ("images", "answer"), outcome


REFERENCE = envelope("/sdapi/v1/txt2img", {"prompt": "a lighthouse", "seed": 3, "steps": 2, "width": 64,
                                           "height": 64, "sampler_name": "Euler a"})


def reference_pixels(engine) -> list[str]:
    """Pixel hashes of a normal small request: the worker must keep serving it, identically, after any case."""
    from handler import serve_job

    output = serve_job(copy.deepcopy(REFERENCE), engine)
    assert "images" in output, output
    return [pixel_hash(image) for image in output["images"]]


def pixel_hash(image: str) -> str:
    """SHA-256 of a base64 image's decoded pixels (the PNG text chunks, which hold the infotext, excluded)."""
    with Image.open(io.BytesIO(base64.b64decode(image))) as decoded:
        return hashlib.sha256(decoded.mode.encode() + repr(decoded.size).encode() + decoded.tobytes()).hexdigest()
