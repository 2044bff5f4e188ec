"""Translation shared by txt2img and img2img: limits, seeds, sizes, prompts, override_settings, sampler knobs."""

import random
from collections.abc import Callable
from typing import Any

from engine.errors import RequestError, UnsupportedError
from engine.plan import NoiseSpec
from engine.prompts.dynamic_titles import DYNAMIC_PROMPTS_KEYS, DYNAMIC_PROMPTS_TITLE
from engine.prompts.options import OVERRIDE_SETTINGS as PROMPT_OVERRIDE_SETTINGS
from engine.prompts.parser import extract_extra_networks
from engine.prompts.wildcards import SIMPLE_WILDCARDS_TITLE
from engine.samplers import SamplerOptions
from engine.settings import Settings
from engine.translate.faces import FACE_RESTORATION_SETTINGS
from engine.wire.img2img import Img2ImgRequest
from engine.wire.scripts import check_alwayson_names, selectable_script
from engine.wire.txt2img import GenerationRequest


# A1111 `get_fixed_seed`: -1 (or empty) means a random seed in this range.
SEED_RANGE = 4294967294
# torch's `Generator.manual_seed` takes at most an unsigned 64-bit value; image i uses seed + i.
MAX_SEED = 2**64 - 1

# Fields A1111 accepts that this worker does not implement: asking for them is an error, never a no-op.
UNSUPPORTED_FIELDS: tuple[tuple[str, Callable[[GenerationRequest], bool], str], ...] = (
    (
        "firstpass_image",
        lambda r: bool(getattr(r, "firstpass_image", None)),
        "a given first-pass image is not supported",
    ),
    ("infotext", lambda r: bool(r.infotext), "filling fields from an infotext is not supported yet"),
    ("s_min_uncond", lambda r: bool(r.s_min_uncond), "skipping the negative prompt early is not supported"),
)

# alwayson_scripts A1111 extensions provide (and scripts other modules read: the refiner); matched
# case-insensitively like A1111 does. A1111's own always-on scripts are in engine.wire.scripts /
# engine.translate.alwayson.
SUPPORTED_SCRIPTS = {
    "adetailer": "ADetailer", "controlnet": "ControlNet", "reactor": "ReActor", "refiner": "Refiner",
    **dict.fromkeys(DYNAMIC_PROMPTS_KEYS, DYNAMIC_PROMPTS_TITLE),
    SIMPLE_WILDCARDS_TITLE.lower(): SIMPLE_WILDCARDS_TITLE,
}

# Mask blur and dilation run cv2 kernels whose cost grows with their size (a blur of 256 takes ~40 s on a
# 2048² mask on one CPU core); A1111's and ADetailer's sliders stop at these values.
MAX_MASK_BLUR = 64
MAX_DILATE_ERODE = 128

# Values A1111 accepts for "keep what the first pass used".
SAME_SAMPLER = (None, "", "Use same sampler")

SAME_CHECKPOINT = (None, "", "Use same checkpoint")


def reject_unsupported(request: GenerationRequest) -> None:
    for field, is_requested, message in UNSUPPORTED_FIELDS:
        if is_requested(request):
            raise UnsupportedError(field, message)
    selectable_script(request.script_name, is_img2img(request))  # an unknown name is A1111's 422
    check_alwayson_names(request.alwayson_scripts or {}, SUPPORTED_SCRIPTS, is_img2img(request))


def is_img2img(request: GenerationRequest) -> bool:
    return isinstance(request, Img2ImgRequest)


def bounded_int(value: int | None, field: str, low: int, high: int) -> int:
    if value is None or not low <= value <= high:
        raise RequestError(field, f"must be an integer from {low} to {high}, got {value!r}")
    return value


def check_prompt_length(text: str | list[str] | None, field: str, max_chars: int) -> None:
    """A prompt field (or each entry of a prompt list) within `max_chars` characters: every 75 tokens cost a
    text-encoder pass, and the parsers are linear only in well-formed input."""
    entries = text if isinstance(text, list) else [text]
    for index, entry in enumerate(entries):
        if isinstance(entry, str) and len(entry) > max_chars:
            where = f"{field}[{index}]" if isinstance(text, list) else field
            raise RequestError(where, f"is {len(entry)} characters; at most {max_chars} accepted")


def check_prompt_lengths(request: GenerationRequest, max_chars: int) -> None:
    """Every prompt field of the request (styles already merged in), before any is parsed."""
    for field in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
        check_prompt_length(getattr(request, field, None), field, max_chars)


def image_size(request: GenerationRequest, settings: Settings) -> tuple[int, int]:
    """A1111 builds a (h//8, w//8) latent, so the image is floored to a multiple of 8."""
    for field in ("width", "height"):
        value = getattr(request, field)
        if value is None or value < 8:
            raise RequestError(field, f"must be at least 8 pixels, got {value!r}")
    if request.width * request.height > settings.max_pixels:
        raise RequestError("width", f"width × height must be at most {settings.max_pixels} pixels")
    return request.width // 8 * 8, request.height // 8 * 8


def per_image(value: str | list[str] | None, count: int, field: str) -> tuple[str, ...]:
    if isinstance(value, list):
        if len(value) != count:
            raise RequestError(field, f"a list must hold one prompt per image ({count}), got {len(value)}")
        return tuple(value)
    return (value or "",) * count


def take_extra_networks(prompts: tuple[str, ...], request: GenerationRequest):
    """A1111 removes `<lora:…>` tags from every positive prompt and activates those of the first prompt.
    `disable_extra_networks` keeps the tags out of the prompts but activates nothing."""
    cleaned = [extract_extra_networks(prompt) for prompt in prompts]
    networks = () if request.disable_extra_networks else tuple(cleaned[0][1])
    return tuple(text for text, _ in cleaned), networks


def multiple_of_8(size: tuple[int, int]) -> tuple[int, int]:
    """A1111 processes at (w // 8) × (h // 8) latents, so the pixels it produces are floored to 8."""
    return size[0] // 8 * 8, size[1] // 8 * 8


def fixed_seed(seed: int | None) -> int:
    if seed is None or seed == -1:
        return random.randrange(SEED_RANGE)
    return seed


def noise_spec(
    request: GenerationRequest,
    count: int,
    options: dict[str, Any],
    seeds: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
) -> NoiseSpec:
    """Each image's seed and subseed (A1111's seed + i, or `seeds` = (seeds, subseeds) given by a script)."""
    for field in ("seed", "subseed"):
        value = getattr(request, field)
        if value is not None and value < -1:
            raise RequestError(field, f"must be -1 (random) or a non-negative integer, got {value}")
        if value is not None and value + count - 1 > MAX_SEED:
            raise RequestError(field, f"must be at most {MAX_SEED - count + 1} for {count} image(s) (a 64-bit "
                                      f"seed per image), got {value}")
    seed, subseed = fixed_seed(request.seed), fixed_seed(request.subseed)
    strength = float(request.subseed_strength or 0.0)
    # A1111 gives every image the same seed when a variation strength is set, else seed + i.
    step = 0 if strength != 0 else 1
    resize = (max(request.seed_resize_from_w or 0, 0), max(request.seed_resize_from_h or 0, 0))
    if seeds is None:
        seeds = (tuple(seed + i * step for i in range(count)), tuple(subseed + i for i in range(count)))
    return NoiseSpec(
        seeds=tuple(seeds[0]),
        subseeds=tuple(seeds[1]),
        subseed_strength=strength,
        seed_resize_from=resize if all(resize) else (0, 0),
        source=options.get("randn_source", "GPU"),
        eta_noise_seed_delta=int(options.get("eta_noise_seed_delta", 0)),
    )


def request_warnings(request: GenerationRequest) -> list[str]:
    ignored = [f"ignored unknown field {name!r}" for name in request.ignored_fields()]
    unsupported = [
        f"ignored override_settings.{key}: not supported yet"
        for key in (request.override_settings or {})
        if key not in OVERRIDE_SETTINGS
    ]
    return ignored + unsupported


def _choice(*allowed: str) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if value not in allowed:
            raise RequestError(f"override_settings.{key}", f"must be one of {list(allowed)}, got {value!r}")
        return value

    return check


def _int_between(low: int, high: int) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise RequestError(
                f"override_settings.{key}", f"must be an integer from {low} to {high}, got {value!r}"
            )
        return int(value)

    return check


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"override_settings.{key}", f"must be a number, got {value!r}")
    return float(value)


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"override_settings.{key}", f"must be true or false, got {value!r}")
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RequestError(f"override_settings.{key}", f"must be a string, got {value!r}")
    return value


def _as_given(key: str, value: Any) -> Any:
    return value


# The A1111 options a request may override, with their validators.
OVERRIDE_SETTINGS: dict[str, Callable[[str, Any], Any]] = {
    "sd_model_checkpoint": _string,
    "CLIP_stop_at_last_layers": _int_between(1, 12),
    "eta_noise_seed_delta": _int_between(0, 2**32),
    "randn_source": _choice("GPU", "CPU"),
    "sd_vae": _string,
    "eta_ancestral": _number,
    "eta_ddim": _number,
    "s_churn": _number,
    "s_tmin": _number,
    "s_tmax": _number,
    "s_noise": _number,
    "sigma_min": _number,
    "sigma_max": _number,
    "rho": _number,
    "always_discard_next_to_last_sigma": _boolean,
    "initial_noise_multiplier": _number,
    "tiling": _boolean,
    "hires_fix_refiner_pass": _choice("first pass", "second pass", "both passes"),
    "refiner_switch_by_sample_steps": _boolean,
    # Dynamic Prompts' and Simple wildcards' options (engine.prompts.dynamic, engine.prompts.wildcards).
    **dict.fromkeys(("dp_ignore_whitespace", "dp_write_raw_template", "dp_wildcard_manager_no_dedupe",
                     "dp_wildcard_manager_no_sort", "dp_wildcard_manager_shuffle", "wildcards_same_seed",
                     "wildcards_write_infotext"), _boolean),
    **dict.fromkeys(("dp_parser_variant_start", "dp_parser_variant_end", "dp_parser_wildcard_wrap"), _string),
    # Validated by PromptOptions, which knows their accepted values.
    **{key: _as_given for key in PROMPT_OVERRIDE_SETTINGS},
    **FACE_RESTORATION_SETTINGS,
}


def read_override_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    return {
        key: OVERRIDE_SETTINGS[key](key, value)
        for key, value in overrides.items()
        if key in OVERRIDE_SETTINGS
    }


def sampler_options(request: GenerationRequest, choice, options: dict[str, Any]) -> SamplerOptions:
    """A1111's sampler knobs: the request's fields, except that A1111's `opts` win when set
    (`Sampler.initialize`); `override_settings` is how a request sets those opts."""
    eta_option = "eta_ddim" if choice.definition.family == "timesteps" else "eta_ancestral"
    knobs = {
        "eta": options.get(eta_option, request.eta),
        "s_churn": options.get("s_churn", request.s_churn),
        "s_tmin": options.get("s_tmin", request.s_tmin),
        "s_tmax": options.get("s_tmax", request.s_tmax),
        "s_noise": options.get("s_noise", request.s_noise),
        "randn_source": options.get("randn_source"),
        **{
            key: options.get(key)
            for key in ("sigma_min", "sigma_max", "rho", "always_discard_next_to_last_sigma")
        },
    }
    return SamplerOptions(**{key: value for key, value in knobs.items() if value is not None})
