"""The prompt-rewriting extensions in `alwayson_scripts`: Dynamic Prompts and Simple wildcards.

Both run in A1111's `scripts.process`, after the styles are merged (`setup_prompts`) and before extra networks
are read, and replace `p.all_prompts` / `p.all_negative_prompts` with one generated prompt per image. Here they
rewrite the request the same way: `prompt` and `negative_prompt` become per-image lists, the seed is fixed
first (the prompts depend on it), and the hires prompts follow as the extensions make them follow.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import RequestError, UnsupportedError
from engine.prompts.dynamic_titles import DYNAMIC_PROMPTS_KEYS
from engine.prompts.wildcards import SIMPLE_WILDCARDS_TITLE, UnknownWildcard, simple_wildcards
from engine.translate.alwayson import script_args
from engine.translate.common import fixed_seed, is_img2img
from engine.wire.txt2img import GenerationRequest


# The script's 18 positional args (its `ui()` return order) with their UI defaults; A1111 fills missing ones
# with these, so `{"args": []}` is enabled.
ARGS = (
    ("is_enabled", True), ("is_combinatorial", False), ("combinatorial_batches", 1), ("is_magic_prompt", False),
    ("is_feeling_lucky", False), ("is_attention_grabber", False), ("min_attention", 1.1), ("max_attention", 1.5),
    ("magic_prompt_length", 100), ("magic_temp_value", 0.7), ("use_fixed_seed", False),
    ("unlink_seed_from_prompt", False), ("disable_negative_prompt", True), ("enable_jinja_templates", False),
    ("no_image_generation", False), ("max_generations", 0), ("magic_model", None), ("magic_blocklist_regex", ""),
)
# Args that switch on what this worker does not run: position → why.
REFUSED = {
    3: "Magic prompt needs a MagicPrompt GPT-2 model from the Hugging Face hub",
    4: "I'm feeling lucky fetches prompts from lexica.art",
    5: "Attention grabber needs a spaCy language model",
    13: "Jinja2 templates are not supported",
    14: "\"Don't generate images\" is not supported",
}


@dataclass(frozen=True)
class RewrittenPrompts:
    """The request with generated per-image prompts, the infotext keys the scripts add, and the image seeds
    when a script sets them (Dynamic Prompts' "Fixed seed"); None: A1111's seed + i."""

    request: GenerationRequest
    infotext: tuple[tuple[str, Any], ...] = ()
    seeds: tuple[tuple[int, ...], tuple[int, ...]] | None = None


def apply_prompt_scripts(request: GenerationRequest, wildcards, options: dict[str, Any],
                         max_images: int) -> RewrittenPrompts:
    """Run Dynamic Prompts, then Simple wildcards (A1111's script order: their folders' names), when the
    request names them.

    Args:
        request: the request with styles merged.
        wildcards: the wildcards folder (`engine.prompts.wildcards.wildcard_folder`).
        options: A1111 options in effect (`dp_*`, `wildcards_*`).
        max_images: the worker's image limit (combinatorial mode may make more prompts than asked for).
    """
    dynamic = _find(request.alwayson_scripts, DYNAMIC_PROMPTS_KEYS)
    simple = _find(request.alwayson_scripts, (SIMPLE_WILDCARDS_TITLE.lower(),))
    result = RewrittenPrompts(request)
    if dynamic is not None:
        result = _dynamic_prompts(request, *dynamic, wildcards, options, max_images)
    if simple is not None:
        result = _simple_wildcards(result, wildcards, options)
    return result


def _find(scripts: Mapping[str, Any] | None, keys: tuple[str, ...]) -> tuple[str, Any] | None:
    found = [(key, value) for key, value in (scripts or {}).items() if key.lower() in keys]
    if len(found) > 1:
        raise RequestError("alwayson_scripts", f"{found[0][0]} is given twice: {[key for key, _ in found]}")
    return found[0] if found else None


def _read_args(value: Any, where: str) -> dict[str, Any]:
    args = script_args(value, where)
    if len(args) > len(ARGS):
        raise RequestError(f"{where}.args", f"at most {len(ARGS)} args ({', '.join(n for n, _ in ARGS)})")
    read = {name: args[i] if i < len(args) and args[i] is not None else default
            for i, (name, default) in enumerate(ARGS)}
    if not read["is_enabled"]:
        return read
    for position, why in REFUSED.items():
        if read[ARGS[position][0]]:
            raise UnsupportedError(f"{where}.args[{position}]", f"{why}; send false")
    for position in (2, 15):
        name = ARGS[position][0]
        if isinstance(read[name], bool) or not isinstance(read[name], int | float) or read[name] < (position == 2):
            raise RequestError(f"{where}.args[{position}]", f"{name} must be a whole number, got {read[name]!r}")
        read[name] = int(read[name])
    return read


def _dynamic_prompts(request, key: str, value: Any, wildcards, options, max_images: int) -> RewrittenPrompts:
    where = f"alwayson_scripts.{key}"
    args = _read_args(value, where)
    if not args["is_enabled"]:
        return RewrittenPrompts(request)
    # Imported here: the dynamicprompts library loads only for requests that use the script.
    from engine.prompts.dynamic import DynamicPromptsOptions, generate_prompts

    script = DynamicPromptsOptions.from_settings(
        options,
        combinatorial=bool(args["is_combinatorial"]),
        combinatorial_batches=args["combinatorial_batches"],
        max_generations=args["max_generations"],
        fixed_seed=bool(args["use_fixed_seed"]),
        unlink_seed_from_prompt=bool(args["unlink_seed_from_prompt"]),
    )
    batch_size, count = _batch(request)
    # `_get_effective_prompt`: the first image's prompt (styles merged) is the template for all.
    template, negative_template = _first(request.prompt), _first(request.negative_prompt)
    seed, subseed = fixed_seed(request.seed), fixed_seed(request.subseed)
    try:
        made = generate_prompts(template, negative_template, script, count, seed, subseed,
                                float(request.subseed_strength or 0.0), wildcards)
    except UnknownWildcard as exc:
        raise exc.as_request_error() from None
    except ValueError as exc:
        raise RequestError(f"{where}.args[2]", str(exc)) from None
    made_count = len(made.prompts)
    if made_count > max_images or made_count % batch_size:
        raise RequestError(f"{where}.args[1]", f"combinatorial generation made {made_count} prompts; this worker "
                                               f"runs at most {max_images} images in whole batches of {batch_size}")
    update: dict[str, Any] = {
        "prompt": list(made.prompts), "negative_prompt": list(made.negative_prompts), "seed": seed,
        "subseed": subseed, "n_iter": math.ceil(made_count / batch_size),
    }
    # `_get_hr_fix_prompts`: a hires prompt equal to the prompt follows the generated prompts; another stays.
    for field, original in (("hr_prompt", template), ("hr_negative_prompt", negative_template)):
        if getattr(request, field, None) == original:
            update[field] = ""
    infotext = ()
    if options.get("dp_write_raw_template", False):  # the extension's "Save template to metadata" option
        infotext = tuple((name, text) for name, text in (("Template", template),
                                                         ("Negative Template", negative_template)) if text)
    seeds = (made.seeds, made.subseeds) if script.fixed_seed else None
    return RewrittenPrompts(request.model_copy(update=update), infotext, seeds)


def _batch(request: GenerationRequest) -> tuple[int, int]:
    """(batch size, images) as A1111 counts them: img2img with several init images runs one per image."""
    batch_size = request.batch_size or 1
    if is_img2img(request) and len(request.init_images or []) > 1:
        batch_size = len(request.init_images)
    return batch_size, batch_size * (request.n_iter or 1)


def _first(value: str | list[str] | None) -> str:
    if isinstance(value, list):
        return value[0] if value else ""
    return value or ""


def _simple_wildcards(result: RewrittenPrompts, wildcards, options: dict[str, Any]) -> RewrittenPrompts:
    """The Simple wildcards script's `process`: each image's prompts get their wildcards from
    `Random(that image's seed)` (`wildcards_same_seed`: the first image's), and the infotext keeps the
    original prompts as `Wildcard prompt` etc. (`wildcards_write_infotext`, on by default)."""
    request = result.request
    _, count = _batch(request)
    seed = fixed_seed(request.seed)
    if result.seeds is not None:
        seeds = list(result.seeds[0])
    else:
        step = 1 if not request.subseed_strength else 0
        seeds = [seed + i * step for i in range(count)]
    if options.get("wildcards_same_seed", False):
        seeds = [seeds[0]] * count
    update: dict[str, Any] = {"seed": seed, "subseed": fixed_seed(request.subseed)}
    infotext = list(result.infotext)
    originals: dict[str, str] = {}
    for field, suffix in (("prompt", "prompt"), ("negative_prompt", "negative prompt"),
                          ("hr_prompt", "hr prompt"), ("hr_negative_prompt", "hr negative prompt")):
        texts = _per_image(getattr(request, field, None), count)
        if not texts or not texts[0]:
            continue
        try:
            replaced = [simple_wildcards(text, image_seed, wildcards) for text, image_seed in zip(texts, seeds,
                                                                                                    strict=True)]
        except UnknownWildcard as exc:
            exc.field = field
            raise exc.as_request_error() from None
        update[field] = replaced if field in ("prompt", "negative_prompt") else _one(replaced, field)
        originals[suffix] = texts[0]
        compare = {"hr prompt": "prompt", "hr negative prompt": "negative prompt"}.get(suffix)
        if (options.get("wildcards_write_infotext", True) and replaced[0] != texts[0]
                and (compare is None or originals.get(compare) != texts[0])):
            infotext.append((f"Wildcard {suffix}", texts[0]))
    return RewrittenPrompts(request.model_copy(update=update), tuple(infotext), result.seeds)


def _per_image(value: str | list[str] | None, count: int) -> list[str]:
    if isinstance(value, list):
        return list(value)
    return [value or ""] * count if value else []


def _one(replaced: list[str], field: str) -> str:
    """A hires prompt is one text for every image here: wildcards in it must come out the same for all."""
    if len(set(replaced)) > 1:
        raise UnsupportedError(field, "Simple wildcards that differ per image in a hires prompt are not "
                                      "supported; leave the hires prompt empty to follow the prompt")
    return replaced[0]
