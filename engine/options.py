"""The worker's A1111 options (`shared.opts`): defaults, `POST /options`, and overrides that persist."""

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from engine.errors import RequestError
from engine.imaging.png import IMAGE_FORMATS, ImageEncoding
from engine.prompts.options import OVERRIDE_SETTINGS as PROMPT_OPTIONS
from engine.prompts.options import prompt_options_from
from engine.resources.catalog import ModelCatalog
from engine.resources.entries import CheckpointEntry
from engine.translate.common import OVERRIDE_SETTINGS
from engine.wire.options import OPTION_NAMES, check_option


logger = logging.getLogger(__name__)

# A1111 v1.10 defaults of every option this worker reads (`shared_options.py`). Only options set on purpose
# (POST /options, or override_settings kept with override_settings_restore_afterwards=false) reach the engine:
# an unset option lets a request field win where A1111's `opts` would not be consulted either.
DEFAULTS: dict[str, Any] = {
    "sd_model_checkpoint": None,
    "sd_vae": "Automatic",
    "CLIP_stop_at_last_layers": 1,
    "eta_noise_seed_delta": 0,
    "randn_source": "GPU",
    "eta_ancestral": 1.0,
    "eta_ddim": 0.0,
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "s_noise": 1.0,
    "sigma_min": 0.0,
    "sigma_max": 0.0,
    "rho": 0.0,
    "always_discard_next_to_last_sigma": False,
    "initial_noise_multiplier": 1.0,
    "emphasis": "Original",
    "comma_padding_backtrack": 20,
    "sdxl_clip_l_skip": False,
    "pad_cond_uncond": False,
    "tiling": False,
    "hires_fix_refiner_pass": "second pass",
    "refiner_switch_by_sample_steps": False,
    "sdxl_refiner_low_aesthetic_score": 2.5,
    "sdxl_refiner_high_aesthetic_score": 6.0,
    "samples_format": "png",
    # A1111 UI options that clients read and write back (its own API test flips send_seed); stored, not read.
    "send_seed": True,
    "jpeg_quality": 80,
    "webp_lossless": False,
    "face_restoration": False,
    "face_restoration_model": "CodeFormer",
    "code_former_weight": 0.5,
    # The extensions' own options, at their defaults (sd-dynamic-prompts `settings.py`, the wildcards script).
    "dp_ignore_whitespace": False,
    "dp_write_raw_template": False,
    "dp_parser_variant_start": "{",
    "dp_parser_variant_end": "}",
    "dp_parser_wildcard_wrap": "__",
    "dp_wildcard_manager_no_dedupe": False,
    "dp_wildcard_manager_no_sort": False,
    "dp_wildcard_manager_shuffle": False,
    "wildcards_same_seed": False,
    "wildcards_write_infotext": True,
}


def _samples_format(key: str, value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in IMAGE_FORMATS:
        raise RequestError(key, f"must be one of {sorted(IMAGE_FORMATS)}, got {value!r}")
    return value.lower()


def _jpeg_quality(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 100:
        raise RequestError(key, f"must be an integer from 1 to 100, got {value!r}")
    return int(value)


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise RequestError(key, f"must be true or false, got {value!r}")
    return value


# Options read when encoding result images (the engine reads the OVERRIDE_SETTINGS ones).
OUTPUT_OPTIONS: dict[str, Callable[[str, Any], Any]] = {
    "samples_format": _samples_format,
    "jpeg_quality": _jpeg_quality,
    "webp_lossless": _flag,
}


class OptionsStore:
    """The options a worker process holds, as A1111's `opts` does: defaults until set, set by `POST /options`
    or by a request's `override_settings` with `override_settings_restore_afterwards: false`. Kept in memory
    only (A1111 also writes config.json; a serverless worker has nowhere lasting to write). Thread-safe.
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        default_checkpoint: Callable[[], CheckpointEntry | None],
        worker_defaults: Mapping[str, Any] | None = None,
    ):
        """Args:
        catalog: resolves `sd_model_checkpoint` names.
        default_checkpoint: the checkpoint used while none is set (the engine's configured default).
        worker_defaults: options whose default the worker's settings change (`PAD_COND_UNCOND`), listed in
            place of A1111's default; the translation reads the same settings.
        """
        self._catalog = catalog
        self._default_checkpoint = default_checkpoint
        self._defaults = {**DEFAULTS, **(worker_defaults or {})}
        self._values: dict[str, Any] = {}  # options this worker reads, set on purpose
        self._stored: dict[str, Any] = {}  # other A1111 options a client stored: listed, never used
        self._lock = threading.Lock()

    def set(self, values: Mapping[str, Any], where: str = "options") -> None:
        """`POST /sdapi/v1/options`: validate every value first, then store them all.

        Raises:
            RequestError: a key is no A1111 option, a value is invalid, or `sd_model_checkpoint` names no
                checkpoint (A1111 answers that with "model … not found"); nothing is stored then.
        """
        self.apply(self.checked(values, where))

    def checked(
        self, values: Mapping[str, Any], where: str = "options", strict: bool = True
    ) -> dict[str, Any]:
        """The values as they would be stored, validated; nothing is stored (`apply` stores them).

        Args:
            where: the field the values came in, for errors ("options", "override_settings").
            strict: a key that is no A1111 option is an error; else it is left out (override_settings, whose
                unknown keys the request's warnings already report as ignored).
        """
        checked = {}
        for key, value in values.items():
            if key in OVERRIDE_SETTINGS or key in OUTPUT_OPTIONS:
                checked[key] = self._validated(key, value, where)
            elif strict or key in OPTION_NAMES:
                checked[key] = check_option(f"{where}.{key}", key, value)
        return checked

    def apply(self, checked: Mapping[str, Any]) -> None:
        """Store values `checked` returned."""
        read = {
            key: value for key, value in checked.items() if key in OVERRIDE_SETTINGS or key in OUTPUT_OPTIONS
        }
        with self._lock:
            self._values.update(read)
            self._stored.update({key: value for key, value in checked.items() if key not in read})
        if read:
            logger.info("options set: %s", read)

    def overrides_to_keep(self, overrides: Mapping[str, Any] | None, restore_afterwards: bool | None) -> dict:
        """A1111 restores `override_settings` after a request unless `override_settings_restore_afterwards` is
        false: then they stay set for the requests that follow (in memory, as in A1111). Returns them
        validated, for `apply` once the request has succeeded (a failed request changes no option)."""
        if restore_afterwards is False and overrides:
            return self.checked(overrides, where="override_settings", strict=False)
        return {}

    def for_request(self) -> dict[str, Any]:
        """The options set on purpose that the engine reads, for `to_plan(..., defaults=...)`."""
        with self._lock:
            return {key: value for key, value in self._values.items() if key in OVERRIDE_SETTINGS}

    def encoding(self, overrides: Mapping[str, Any] | None = None) -> ImageEncoding:
        """How to encode a request's images: its `override_settings`, else the options, else A1111's defaults.

        A1111 restores its options before the API encodes images, so there an override reaches the response
        only with `override_settings_restore_afterwards: false`; here it always applies to its own request.
        """
        overrides = overrides or {}
        with self._lock:
            values = {key: self._values.get(key, DEFAULTS[key]) for key in OUTPUT_OPTIONS}
        for key, check in OUTPUT_OPTIONS.items():
            if key in overrides:
                values[key] = check(f"override_settings.{key}", overrides[key])
        return ImageEncoding(**values)

    def listing(self) -> dict[str, Any]:
        """`GET /sdapi/v1/options`: every option this worker reads, what clients stored, and the checkpoint
        in use by its A1111 title (with `sd_checkpoint_hash`, its sha256 when known)."""
        with self._lock:
            body = {**self._defaults, **self._stored, **self._values}
        entry = self.checkpoint()
        body["sd_model_checkpoint"] = entry.title if entry else None
        body["sd_checkpoint_hash"] = (
            entry.hashes.peek(entry.path, "sha256") if entry and not entry.is_folder else None
        )
        return body

    def checkpoint(self) -> CheckpointEntry | None:
        """The checkpoint a request without `sd_model_checkpoint` uses."""
        with self._lock:
            name = self._values.get("sd_model_checkpoint")
        return self._catalog.find_checkpoint(name) if name else self._default_checkpoint()

    def _validated(self, key: str, value: Any, where: str) -> Any:
        field = f"{where}.{key}"
        if key == "sd_model_checkpoint":
            if not isinstance(value, str) or not value.strip():
                raise RequestError(field, f"must be a checkpoint name, got {value!r}")
            # Stored by its relative path: stable while its title changes once the hash is known.
            return self._catalog.find_checkpoint(value, field=field).name
        check = OUTPUT_OPTIONS.get(key) or OVERRIDE_SETTINGS[key]
        try:
            checked = check(key, value)
            if key in PROMPT_OPTIONS:
                prompt_options_from({key: checked})  # prompt options are validated where they are read
            return checked
        except RequestError as exc:
            # The shared validators name the field as override_settings; say where the value really came from.
            raise RequestError(field, exc.message) from None
