"""Worker settings, read once from the environment and passed explicitly to whoever needs them."""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.imaging.limits import ImageLimits, limits_for, parse_image_limits
from engine.speedups import SpeedUps


SOURCE_ROOT = Path(__file__).resolve().parent.parent


def own_models_dir() -> Path:
    """The worker's own models folder: `models/` beside `engine/` in a source checkout (the RunPod layout, an
    editable install); for an installed package, which has no such folder, `models/` in the current folder."""
    if (SOURCE_ROOT / "handler.py").is_file():
        return SOURCE_ROOT / "models"
    return Path.cwd() / "models"


@dataclass(frozen=True)
class Settings:
    """Everything configurable about the worker. Build with `Settings.from_env()` or directly in tests."""

    models_dir: Path = field(default_factory=own_models_dir)
    # Architecture configs and tokenizers (diffusers folders without weights), one per model family.
    configs_dir: Path | None = None
    default_checkpoint: str | None = None
    # "auto" picks CUDA when available; "cpu" / "cuda" / "cuda:1" force a device.
    device: str = "auto"
    max_steps: int = 150
    max_pixels: int = 2048 * 2048
    max_batch_images: int = 16
    # Bounds on what a payload can make the worker do besides steps, pixels and images (checked before any work).
    max_prompt_chars: int = 20_000  # each prompt field; ~5,000 tokens, 67 of A1111's 75-token chunks
    max_control_units: int = 10  # entries of alwayson_scripts.controlnet.args (sd-webui-controlnet's UI max)
    max_script_generations: int = 100  # generations (or SD upscale tiles) one selectable script may run
    # Input images: the bounds of every image field, and per kind of field (engine.imaging.limits).
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    image_limit_overrides: Mapping[str, ImageLimits] = field(default_factory=dict)
    # Run the VAE in tiles above this many pixels; None: only when a whole decode would not fit on the GPU.
    vae_tile_above_pixels: int | None = None
    # Memory the resident checkpoints may take (GB); None: derived from the device (see resources.cache).
    model_memory_budget_gb: float | None = None
    # Seconds a generation may run before it is stopped like an interrupt (images so far kept); None: no limit.
    job_timeout_s: float | None = None
    # Checkpoints loaded before the first request (names as in payloads); empty = the default only.
    preload: tuple[str, ...] = ()
    # A1111 styles files (paths or wildcards, comma-separated); None: styles.csv beside or in the models folder.
    styles_file: str | None = None
    # Opt-in speed-ups (torch.compile, channels-last, fp16-fixed SDXL VAE, pad_cond_uncond); all off by default.
    speedups: SpeedUps = field(default_factory=SpeedUps)
    # Wildcard files for Dynamic Prompts / Simple wildcards; None: models/wildcards (or an A1111 install's
    # extension folder, see engine.prompts.wildcards.wildcard_folder).
    wildcards_dir: Path | None = None
    # CPU threads torch computes with, set on every job's thread (engine.threads); None: torch's count when
    # the engine is built. Pixels depend on it (float sums split differently), so it stays fixed.
    torch_threads: int | None = None
    # sha256 list of the pickles that run code when loaded (ultralytics detectors) that may load; None: any
    # file in the models folder is trusted (engine.resources.trusted_pickles).
    trusted_pickles: Path | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def config_roots(self) -> tuple[Path, ...]:
        """Where architecture configs are looked for: `CONFIGS_DIR`, the models folder's `configs/`, and the
        worker's own `models/configs` (an A1111 folder on a network volume has none of its own)."""
        candidates = (self.configs_dir, self.models_dir / "configs", own_models_dir() / "configs")
        return tuple(dict.fromkeys(path for path in candidates if path is not None))

    def limits_for_images(self, kind: str) -> ImageLimits:
        """The input-image limits of one kind of field (`init_images`, `mask`, `controlnet`, `extras`,
        `png_info`)."""
        return limits_for(kind, self.image_limits, self.image_limit_overrides)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Read `MODELS_DIR` (or find a RunPod network volume holding an A1111 install), `CONFIGS_DIR`, `DEFAULT_CHECKPOINT`, `DEVICE`, `MAX_STEPS`, `MAX_PIXELS`,
        `MAX_BATCH_IMAGES`, `MAX_PROMPT_CHARS`, `MAX_CONTROL_UNITS`, `MAX_SCRIPT_GENERATIONS`, `MAX_IMAGE_BASE64_CHARS`,
        `MAX_INPUT_PIXELS`, `MAX_INPUT_IMAGES`, `IMAGE_LIMITS`, `VAE_TILE_ABOVE_PIXELS`, `JOB_TIMEOUT_S`, `PRELOAD`
        (comma-separated), `STYLES_FILE`, `WILDCARDS_DIR`, `TORCH_THREADS`, `TRUSTED_PICKLES` (a path, or 1 for
        the list `download_models.py` writes in the models folder) and the speed-up switches
        (`engine.speedups.SpeedUps.from_env`) from the environment."""
        from engine.resources.catalog import locate_models_root
        from engine.resources.trusted_pickles import DEFAULT_LIST_NAME

        env = os.environ if env is None else env
        settings = cls()
        values = {
            # MODELS_DIR, else an A1111 install on a RunPod network volume, else models/ beside the code.
            "models_dir": locate_models_root(env, settings.models_dir),
            "configs_dir": Path(env["CONFIGS_DIR"]) if env.get("CONFIGS_DIR") else None,
            "default_checkpoint": env.get("DEFAULT_CHECKPOINT") or None,
            "device": env.get("DEVICE") or None,
            "max_steps": _int(env, "MAX_STEPS"),
            "max_pixels": _int(env, "MAX_PIXELS"),
            "max_batch_images": _int(env, "MAX_BATCH_IMAGES"),
            "max_prompt_chars": _int(env, "MAX_PROMPT_CHARS"),
            "max_control_units": _int(env, "MAX_CONTROL_UNITS"),
            "max_script_generations": _int(env, "MAX_SCRIPT_GENERATIONS"),
            "vae_tile_above_pixels": _int(env, "VAE_TILE_ABOVE_PIXELS"),
            "model_memory_budget_gb": float(env["MODEL_MEMORY_BUDGET_GB"])
            if env.get("MODEL_MEMORY_BUDGET_GB")
            else None,
            "job_timeout_s": _positive_float(env, "JOB_TIMEOUT_S"),
            "preload": tuple(p.strip() for p in env.get("PRELOAD", "").split(",") if p.strip()) or None,
            "styles_file": env.get("STYLES_FILE") or None,
            "speedups": SpeedUps.from_env(env),
            "wildcards_dir": Path(env["WILDCARDS_DIR"]) if env.get("WILDCARDS_DIR") else None,
            "torch_threads": _positive_int(env, "TORCH_THREADS"),
        }
        trusted = env.get("TRUSTED_PICKLES", "").strip()
        if trusted:
            # "1" means the list download_models.py writes beside the models.
            values["trusted_pickles"] = (
                values["models_dir"] / DEFAULT_LIST_NAME if trusted.lower() in ("1", "true", "yes") else Path(trusted)
            )
        values = {k: v for k, v in values.items() if v is not None}
        values.update(_image_limits(env, overrides.get("image_limits", settings.image_limits)))
        return replace(settings, **{**values, **overrides})


def _image_limits(env: Mapping[str, str], default: ImageLimits) -> dict[str, object]:
    """`MAX_IMAGE_BASE64_CHARS`, `MAX_INPUT_PIXELS`, `MAX_INPUT_IMAGES` (every image field) and `IMAGE_LIMITS`
    (per kind of field, over those)."""
    given = {"base64_chars": _int(env, "MAX_IMAGE_BASE64_CHARS"), "pixels": _int(env, "MAX_INPUT_PIXELS"),
             "images": _int(env, "MAX_INPUT_IMAGES")}
    default = replace(default, **{name: value for name, value in given.items() if value is not None})
    values: dict[str, object] = {"image_limits": default}
    if env.get("IMAGE_LIMITS"):
        values["image_limit_overrides"] = parse_image_limits(env["IMAGE_LIMITS"], default)
    return values


def _int(env: Mapping[str, str], key: str) -> int | None:
    raw = env.get(key)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {key} must be an integer, got {raw!r}") from None


def _positive_float(env: Mapping[str, str], key: str) -> float | None:
    raw = env.get(key)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"environment variable {key} must be a number, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"environment variable {key} must be positive, got {raw!r}")
    return value


def _positive_int(env: Mapping[str, str], key: str) -> int | None:
    value = _int(env, key)
    if value is not None and value < 1:
        raise ValueError(f"environment variable {key} must be a positive integer, got {env[key]!r}")
    return value
