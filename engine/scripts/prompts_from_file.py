"""Prompts from file or textbox: one generation per line, a line being a prompt or `--field value` options.

As AUTOMATIC1111/stable-diffusion-webui v1.10 `scripts/prompts_from_file.py` (AGPL-3.0, written anew here):
`script_args` = `[iterate_seed, same_seed_for_all_lines, prompt_position ("start"/"end"), text]`. A line
with "--" is read like a command line (shlex), `--prompt`/`--negative_prompt` taking every word up to the next
option; a line that does not parse is used whole as the prompt. A line's prompt goes before (or after) the
request's prompt, joined by a space. Work: one generation per line.
"""

import logging
import shlex
from collections.abc import Callable
from typing import Any

from engine.errors import RequestError
from engine.scripts.args import ScriptArgs
from engine.scripts.results import combine
from engine.translate import fixed_seed


logger = logging.getLogger(__name__)


def _boolean(text: str) -> bool:
    return text == "true"


# A1111's `prompt_tags`: option → how its value is read. Output paths and save flags change nothing here.
LINE_OPTIONS: dict[str, Callable[[str], Any]] = {
    "sd_model": str,
    "outpath_samples": str,
    "outpath_grids": str,
    "prompt_for_display": str,
    "prompt": str,
    "negative_prompt": str,
    "styles": str,
    "seed": int,
    "subseed_strength": float,
    "subseed": int,
    "seed_resize_from_h": int,
    "seed_resize_from_w": int,
    "sampler_index": int,
    "sampler_name": str,
    "batch_size": int,
    "n_iter": int,
    "steps": int,
    "cfg_scale": float,
    "width": int,
    "height": int,
    "restore_faces": _boolean,
    "tiling": _boolean,
    "do_not_save_samples": _boolean,
    "do_not_save_grid": _boolean,
}
NO_EFFECT = {"outpath_samples", "outpath_grids", "prompt_for_display", "do_not_save_samples", "do_not_save_grid",
             "sampler_index"}


def parse_line_options(line: str) -> dict[str, Any]:
    """A1111 `cmdargs`. Raises ValueError for a line that is not `--option value …`."""
    words = shlex.split(line)
    options: dict[str, Any] = {}
    position = 0
    while position < len(words):
        word = words[position]
        if not word.startswith("--") or position + 1 >= len(words):
            raise ValueError(f"expected --option value at {word!r}")
        name = word[2:]
        if name in ("prompt", "negative_prompt"):
            position += 1
            collected = [words[position]]
            position += 1
            while position < len(words) and not words[position].startswith("--"):
                collected.append(words[position])
                position += 1
            options[name] = " ".join(collected)
            continue
        if name not in LINE_OPTIONS:
            raise ValueError(f"unknown option {word}")
        options[name] = LINE_OPTIONS[name](words[position + 1])
        position += 2
    return options


def line_jobs(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The job of every non-empty line, and a warning per line that did not parse (used as a prompt)."""
    jobs, warnings = [], []
    for line in (line.strip() for line in text.splitlines()):
        if not line:
            continue
        if "--" not in line:
            jobs.append({"prompt": line})
            continue
        try:
            jobs.append(parse_line_options(line))
        except ValueError as exc:
            warnings.append(f"script_args[3]: line {line!r:.60} is not --option value ({exc}); used as a prompt")
            jobs.append({"prompt": line})
    return jobs, warnings


def _job_changes(request, job: dict[str, Any], position: str) -> dict[str, Any]:
    changes = {key: value for key, value in job.items() if key not in NO_EFFECT and key != "sd_model"}
    if "sd_model" in job:
        changes["override_settings"] = {**(request.override_settings or {}), "sd_model_checkpoint": job["sd_model"]}
    if "styles" in job:
        # A1111 assigns the raw string (and then reads it letter by letter); a comma list is what is meant.
        changes["styles"] = [name.strip() for name in job["styles"].split(",") if name.strip()]
    for field in ("prompt", "negative_prompt"):
        own = getattr(request, field)
        if job.get(field) and own:
            changes[field] = f"{job[field]} {own}" if position == "start" else f"{own} {job[field]}"
    return changes


def run(spec, context):
    args = ScriptArgs(spec, context.request.script_args)
    iterate, same_seed, position = args.flag(0), args.flag(1), args.choice(2)
    jobs, warnings = line_jobs(args.text(3))
    if not jobs:
        # A1111 answers with no images at all; an empty list is more likely a client mistake.
        raise RequestError("script_args[3]", "holds no prompt lines")
    most = context.settings.max_script_generations
    if len(jobs) > most:
        raise RequestError("script_args[3]", f"holds {len(jobs)} prompt lines; at most {most} accepted")
    request = context.request
    seed = request.seed
    if (iterate or same_seed) and seed == -1:
        seed = fixed_seed(seed)
    requests = []
    for job in jobs:
        requests.append(context.variant(**{"seed": seed, **_job_changes(request, job, position)}))
        if iterate:
            seed += (request.batch_size or 1) * (request.n_iter or 1)
    context.validate(requests)
    results = [context.run(job_request) for job_request in requests]
    images = [image for result in results for image in result.images]
    infotexts = [text for result in results for text in result.infotexts]
    combined = combine(results, images, infotexts)
    combined.warnings = warnings + combined.warnings
    return combined

