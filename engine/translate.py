"""A1111 txt2img request → `GenerationPlan`: the only code that speaks both vocabularies."""

import random
from collections.abc import Callable
from typing import Any

from engine import samplers
from engine.detailer.args import ADetailerArgs, parse_adetailer_args
from engine.errors import RequestError, UnsupportedError
from engine.plan import DetailerPlan, GenerationPlan, HiresPlan, NoiseSpec, SamplerSpec
from engine.prompts.options import PromptOptions
from engine.prompts.parser import extract_extra_networks
from engine.sampling.schedulers import SamplerOptions
from engine.settings import Settings
from engine.wire.txt2img import Txt2ImgRequest


# A1111 `get_fixed_seed`: -1 (or empty) means a random seed in this range.
SEED_RANGE = 4294967294

# Fields A1111 accepts that this worker does not implement: asking for them is an error, never a no-op.
UNSUPPORTED_FIELDS: tuple[tuple[str, Callable[[Txt2ImgRequest], bool], str], ...] = (
    (
        "restore_faces",
        lambda r: bool(r.restore_faces),
        "face restoration (CodeFormer/GFPGAN) is not supported",
    ),
    ("tiling", lambda r: bool(r.tiling), "seamless tiling is not supported"),
    (
        "refiner_checkpoint",
        lambda r: r.refiner_checkpoint not in (None, "", "None"),
        "the refiner is not supported",
    ),
    (
        "script_name",
        lambda r: r.script_name not in (None, "", "None"),
        "selectable scripts are not supported",
    ),
    ("firstpass_image", lambda r: bool(r.firstpass_image), "a given first-pass image is not supported"),
    ("infotext", lambda r: bool(r.infotext), "filling fields from an infotext is not supported yet"),
    ("styles", lambda r: bool(r.styles), "no prompt styles are installed; send the style text in the prompt"),
    ("s_min_uncond", lambda r: bool(r.s_min_uncond), "skipping the negative prompt early is not supported"),
)

# alwayson_scripts A1111 extensions provide; matched case-insensitively like A1111 does.
SUPPORTED_SCRIPTS = {"adetailer": "ADetailer"}
PLANNED_SCRIPTS = {"controlnet": "ControlNet"}


def to_plan(
    request: Txt2ImgRequest, settings: Settings, defaults: dict[str, Any] | None = None
) -> GenerationPlan:
    """Validate a txt2img request against the worker's limits and translate it.

    Args:
        request: the parsed A1111 payload.
        settings: limits (steps, pixels, batch) and the default checkpoint.
        defaults: the worker's current options (A1111 `opts`), overridden by `override_settings`.
    """
    _reject_unsupported(request)
    options = {**(defaults or {}), **_read_override_settings(request.override_settings or {})}
    batch_size = _bounded_int(request.batch_size, "batch_size", 1, settings.max_batch_images)
    n_iter = _bounded_int(request.n_iter, "n_iter", 1, settings.max_batch_images)
    if batch_size * n_iter > settings.max_batch_images:
        raise RequestError("batch_size", f"batch_size × n_iter must be at most {settings.max_batch_images}")
    width, height = _image_size(request, settings)
    count = batch_size * n_iter
    choice = samplers.resolve_sampler(request.sampler_name or request.sampler_index, request.scheduler)
    prompts, networks = _take_extra_networks(_per_image(request.prompt, count, "prompt"), request)
    negative_prompts = _per_image(request.negative_prompt, count, "negative_prompt")
    steps = _bounded_int(request.steps, "steps", 1, settings.max_steps)
    sampler = SamplerSpec(choice, _sampler_options(request, choice, options))
    adetailer = parse_adetailer_args(request.alwayson_scripts)
    detailers = _detailer_plans(adetailer, request, width, height, steps, sampler, options)
    hires, hires_infotext = (
        _hires(request, settings, prompts, negative_prompts, steps, sampler, options)
        if request.enable_hr
        else (None, ())
    )
    return GenerationPlan(
        checkpoint=options.get("sd_model_checkpoint") or settings.default_checkpoint,
        prompts=prompts,
        negative_prompts=negative_prompts,
        noise=_noise(request, count, options),
        batch_size=batch_size,
        n_iter=n_iter,
        width=width,
        height=height,
        num_inference_steps=steps,
        guidance_scale=float(request.cfg_scale if request.cfg_scale is not None else 7.0),
        sampler=sampler,
        prompt_options=PromptOptions(clip_skip=int(options.get("CLIP_stop_at_last_layers", 1))),
        extra_networks=networks,
        hires=hires,
        detailers=detailers,
        # A1111 adds the scripts' keys (ADetailer's) before hires fix adds its own.
        infotext_extra=tuple(adetailer.infotext_params().items()) + hires_infotext,
        warnings=tuple(_warnings(request)),
    )


def _reject_unsupported(request: Txt2ImgRequest) -> None:
    for field, is_requested, message in UNSUPPORTED_FIELDS:
        if is_requested(request):
            raise UnsupportedError(field, message)
    for name in request.alwayson_scripts or {}:
        if name.lower() in SUPPORTED_SCRIPTS:
            continue
        script = PLANNED_SCRIPTS.get(name.lower())
        if script is None:
            known = sorted([*SUPPORTED_SCRIPTS.values(), *PLANNED_SCRIPTS.values()])
            raise UnsupportedError(f"alwayson_scripts.{name}", f"unknown script; supported: {known}")
        raise UnsupportedError(f"alwayson_scripts.{name}", f"the {script} extension is not supported yet")


# Values A1111 accepts for "keep what the first pass used".
SAME_SAMPLER = (None, "", "Use same sampler")
SAME_CHECKPOINT = (None, "", "Use same checkpoint")


def _hires(request, settings, prompts, negative_prompts, steps, sampler, options):
    """A1111's hires fix: target size (`calculate_target_resolution`), steps, prompts and sampler of pass 2."""
    if request.denoising_strength is None:
        # A1111 crashes with HTTP 500 here, after the first pass has already run.
        raise RequestError("denoising_strength", "is required with enable_hr: a number in (0, 1]")
    if not 0 < request.denoising_strength <= 1:
        raise RequestError(
            "denoising_strength", f"must be in (0, 1] with enable_hr, got {request.denoising_strength}"
        )
    width, height = request.width, request.height
    resize_x, resize_y = request.hr_resize_x or 0, request.hr_resize_y or 0
    crop = (0, 0)
    extra: list[tuple[str, Any]] = [("Denoising strength", request.denoising_strength)]
    if not resize_x and not resize_y:
        scale = request.hr_scale if request.hr_scale is not None else 2.0
        if scale <= 0:
            raise RequestError("hr_scale", f"must be positive, got {scale}")
        target = (int(width * scale), int(height * scale))
        size_params = [("Hires upscale", scale)]
    else:
        if resize_x < 0 or resize_y < 0:
            raise RequestError("hr_resize_x", "hr_resize_x and hr_resize_y must be ≥ 0")
        target = _hires_resize(width, height, resize_x, resize_y)
        if resize_x and resize_y:
            # Cover the box keeping the aspect ratio, then cut the latent's centre (A1111 truncate_x/y).
            crop = ((target[0] - resize_x) // 8, (target[1] - resize_y) // 8)
        size_params = [("Hires resize", f"{resize_x}x{resize_y}")]
    if target[0] < 8 or target[1] < 8 or target[0] * target[1] > settings.max_pixels:
        raise RequestError(
            "hr_scale", f"the hires size {target[0]}x{target[1]} must be within {settings.max_pixels} pixels"
        )

    hr_steps = request.hr_second_pass_steps or steps
    _bounded_int(hr_steps, "hr_second_pass_steps", 1, settings.max_steps)
    hr_choice = sampler.choice
    if request.hr_sampler_name not in SAME_SAMPLER or request.hr_scheduler not in (
        None,
        "",
        "Use same scheduler",
    ):
        hr_choice = samplers.resolve_sampler(
            sampler.choice.sampler if request.hr_sampler_name in SAME_SAMPLER else request.hr_sampler_name,
            request.hr_scheduler or request.scheduler,
            field="hr_sampler_name",
        )
    hr_prompts = (
        (extract_extra_networks(request.hr_prompt)[0],) * len(prompts) if request.hr_prompt else prompts
    )
    hr_negatives = (
        (request.hr_negative_prompt,) * len(prompts) if request.hr_negative_prompt else negative_prompts
    )
    checkpoint = None if request.hr_checkpoint_name in SAME_CHECKPOINT else request.hr_checkpoint_name

    if checkpoint:
        extra.append(("Hires checkpoint", checkpoint))
    if hr_choice.sampler != sampler.choice.sampler:
        extra.append(("Hires sampler", hr_choice.sampler))
    if hr_prompts != prompts:
        extra.append(("Hires prompt", hr_prompts[0]))
    if hr_negatives != negative_prompts:
        extra.append(("Hires negative prompt", hr_negatives[0]))
    if hr_choice.schedule != sampler.choice.schedule:
        extra.append(("Hires schedule type", hr_choice.schedule))
    extra += size_params
    if request.hr_second_pass_steps:
        extra.append(("Hires steps", request.hr_second_pass_steps))
    if request.hr_upscaler is not None:
        extra.append(("Hires upscaler", request.hr_upscaler))

    plan = HiresPlan(
        width=target[0],
        height=target[1],
        crop=crop,
        # A1111's default when hr_upscaler is None is its default latent mode, "Latent" (bilinear).
        upscaler=request.hr_upscaler or "Latent",
        num_inference_steps=hr_steps,
        strength=min(request.denoising_strength, 0.999),
        prompts=hr_prompts,
        negative_prompts=hr_negatives,
        sampler=SamplerSpec(hr_choice, _sampler_options(request, hr_choice, options)),
        checkpoint=checkpoint,
    )
    return plan, tuple(extra)


def _detailer_plans(adetailer: ADetailerArgs, request, width, height, steps, sampler, options):
    """ADetailer's inner img2img per unit (`get_i2i_p`): its own steps, cfg, sampler, size... when its
    `ad_use_*` flags say so, else the request's; the size is the *base* size even under hires fix."""
    plans = []
    for position, unit in adetailer.active_units:
        unit_sampler = sampler
        if unit.ad_use_sampler:
            same = unit.ad_sampler in SAME_SAMPLER
            schedule = (
                request.scheduler if unit.ad_scheduler in ("", "Use same scheduler") else unit.ad_scheduler
            )
            choice = samplers.resolve_sampler(
                sampler.choice.sampler if same else unit.ad_sampler,
                schedule,
                field=adetailer.field(position, "ad_sampler"),
            )
            unit_sampler = SamplerSpec(choice, _sampler_options(request, choice, options))
        if unit.ad_use_vae and unit.ad_vae not in (None, "", "None", "Use same VAE"):
            raise UnsupportedError(
                adetailer.field(position, "ad_vae"), "external VAE files are not supported yet"
            )
        checkpoint = None
        if unit.ad_use_checkpoint and unit.ad_checkpoint not in (*SAME_CHECKPOINT, "None"):
            checkpoint = unit.ad_checkpoint
        plans.append(
            DetailerPlan(
                model=unit.ad_model,
                model_field=adetailer.field(position, "ad_model"),
                confidence=unit.ad_confidence,
                mask_options=unit.mask_options(),
                prompt=unit.ad_prompt,
                negative_prompt=unit.ad_negative_prompt,
                strength=unit.ad_denoising_strength,
                only_masked=unit.ad_inpaint_only_masked,
                padding=unit.ad_inpaint_only_masked_padding,
                mask_blur=unit.ad_mask_blur,
                size=_multiple_of_8(unit.processing_size(width, height)),
                num_inference_steps=unit.steps(steps),
                guidance_scale=unit.cfg_scale(
                    float(request.cfg_scale if request.cfg_scale is not None else 7.0)
                ),
                sampler=unit_sampler,
                noise_multiplier=unit.ad_noise_multiplier if unit.ad_use_noise_multiplier else 1.0,
                clip_skip=unit.ad_clip_skip if unit.ad_use_clip_skip else None,
                checkpoint=checkpoint,
            )
        )
    return tuple(plans)


def _multiple_of_8(size: tuple[int, int]) -> tuple[int, int]:
    """A1111 processes at (w // 8) × (h // 8) latents, so the pixels it produces are floored to 8."""
    return size[0] // 8 * 8, size[1] // 8 * 8


def _hires_resize(width: int, height: int, resize_x: int, resize_y: int) -> tuple[int, int]:
    if not resize_y:
        return resize_x, resize_x * height // width
    if not resize_x:
        return resize_y * width // height, resize_y
    if width / height < resize_x / resize_y:
        return resize_x, resize_x * height // width
    return resize_y * width // height, resize_y


def _take_extra_networks(prompts: tuple[str, ...], request: Txt2ImgRequest):
    """A1111 removes `<lora:…>` tags from every positive prompt and activates those of the first prompt.
    `disable_extra_networks` keeps the tags out of the prompts but activates nothing."""
    cleaned = [extract_extra_networks(prompt) for prompt in prompts]
    networks = () if request.disable_extra_networks else tuple(cleaned[0][1])
    return tuple(text for text, _ in cleaned), networks


def _bounded_int(value: int | None, field: str, low: int, high: int) -> int:
    if value is None or not low <= value <= high:
        raise RequestError(field, f"must be an integer from {low} to {high}, got {value!r}")
    return value


def _image_size(request: Txt2ImgRequest, settings: Settings) -> tuple[int, int]:
    """A1111 builds a (h//8, w//8) latent, so the image is floored to a multiple of 8."""
    for field in ("width", "height"):
        value = getattr(request, field)
        if value is None or value < 8:
            raise RequestError(field, f"must be at least 8 pixels, got {value!r}")
    if request.width * request.height > settings.max_pixels:
        raise RequestError("width", f"width × height must be at most {settings.max_pixels} pixels")
    return request.width // 8 * 8, request.height // 8 * 8


def _per_image(value: str | list[str] | None, count: int, field: str) -> tuple[str, ...]:
    if isinstance(value, list):
        if len(value) != count:
            raise RequestError(field, f"a list must hold one prompt per image ({count}), got {len(value)}")
        return tuple(value)
    return (value or "",) * count


def fixed_seed(seed: int | None) -> int:
    if seed is None or seed == -1:
        return random.randrange(SEED_RANGE)
    return seed


def _noise(request: Txt2ImgRequest, count: int, options: dict[str, Any]) -> NoiseSpec:
    for field in ("seed", "subseed"):
        value = getattr(request, field)
        if value is not None and value < -1:
            raise RequestError(field, f"must be -1 (random) or a non-negative integer, got {value}")
    seed, subseed = fixed_seed(request.seed), fixed_seed(request.subseed)
    strength = float(request.subseed_strength or 0.0)
    # A1111 gives every image the same seed when a variation strength is set, else seed + i.
    step = 0 if strength != 0 else 1
    resize = (max(request.seed_resize_from_w or 0, 0), max(request.seed_resize_from_h or 0, 0))
    return NoiseSpec(
        seeds=tuple(seed + i * step for i in range(count)),
        subseeds=tuple(subseed + i for i in range(count)),
        subseed_strength=strength,
        seed_resize_from=resize if all(resize) else (0, 0),
        source=options.get("randn_source", "GPU"),
        eta_noise_seed_delta=int(options.get("eta_noise_seed_delta", 0)),
    )


def _warnings(request: Txt2ImgRequest) -> list[str]:
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


# The A1111 options a request may override, with their validators.
OVERRIDE_SETTINGS: dict[str, Callable[[str, Any], Any]] = {
    "sd_model_checkpoint": _string,
    "CLIP_stop_at_last_layers": _int_between(1, 12),
    "eta_noise_seed_delta": _int_between(0, 2**32),
    "randn_source": _choice("GPU", "CPU"),
    # Only the checkpoint's own VAE so far; external VAE files arrive with the model library.
    "sd_vae": _choice("Automatic", "None"),
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
}


def _read_override_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    return {
        key: OVERRIDE_SETTINGS[key](key, value)
        for key, value in overrides.items()
        if key in OVERRIDE_SETTINGS
    }


def _sampler_options(request: Txt2ImgRequest, choice, options: dict[str, Any]) -> SamplerOptions:
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
