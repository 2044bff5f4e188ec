"""A1111's own always-on scripts in `alwayson_scripts` (`Seed`, `Sampler`, `Refiner`, `Extra options`,
`Hypertile`, `Comments`, `Soft Inpainting`) and the multidiffusion-upscaler ones (`Tiled VAE`,
`Tiled Diffusion`): their positional args mapped onto request fields, or refused.

A1111 ≥ 1.6 lists these scripts and accepts their names, matched case-insensitively against the script titles
(`modules/api/api.py` `script_name_to_index`); an unknown name is HTTP 422 "Script '<name>' not found". Its
API then skips the setup of the built-in UI scripts (`ScriptBuiltinUI.setup_for_ui_only`), so there their
args change nothing. Clients send them expecting the values to be used; here they fill the request fields
the script sets in A1111's UI (`modules/processing_scripts/*.py`), unless the request sets that field
itself (the request wins, as it does in A1111), and a warning says what was applied.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import RequestError, UnsupportedError
from engine.imaging.vae_tiling import VaeTiling
from engine.wire.txt2img import GenerationRequest


@dataclass
class Applied:
    """What one script's args come to: request fields to set, warnings, and a VAE tiling to use."""

    fields: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    vae_tiling: VaeTiling | None = None


@dataclass(frozen=True)
class BuiltinScript:
    """One always-on script: A1111's title, where it exists, and its args → `Applied`."""

    title: str
    read: Callable[[list[Any], str], Applied]
    img2img_only: bool = False


def _arg(args: list[Any], index: int, default: Any) -> Any:
    """Positional arg `index`, A1111's UI default when missing or null."""
    return args[index] if index < len(args) and args[index] is not None else default


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def _number(value: Any, where: str, kind: type = float) -> Any:
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        raise RequestError(where, f"must be a number, got {value!r:.40}") from None


def _seed(args: list[Any], where: str) -> Applied:
    """`[seed, extra, subseed, subseed_strength, seed_resize_from_w, seed_resize_from_h]` (`seed.py`): the
    variation and resize values count only with the "Extra" box ticked, as A1111's setup reads them."""
    applied = Applied({"seed": _number(_arg(args, 0, -1), f"{where}[0]", int)})
    extra = _flag(_arg(args, 1, False))
    strength = _number(_arg(args, 3, 0.0), f"{where}[3]")
    if extra and strength > 0:
        applied.fields.update(subseed=_number(_arg(args, 2, -1), f"{where}[2]", int), subseed_strength=strength)
    resize = (_number(_arg(args, 4, 0), f"{where}[4]", int), _number(_arg(args, 5, 0), f"{where}[5]", int))
    if extra and resize[0] > 0 and resize[1] > 0:
        applied.fields.update(seed_resize_from_w=resize[0], seed_resize_from_h=resize[1])
    return applied


def _sampler(args: list[Any], where: str) -> Applied:
    """`[steps, sampler_name, scheduler]` (`sampler.py`)."""
    fields = {"steps": _number(_arg(args, 0, 20), f"{where}[0]", int)}
    for index, name in ((1, "sampler_name"), (2, "scheduler")):
        if index < len(args) and args[index] is not None:
            fields[name] = str(args[index])
    return Applied(fields)


def _refiner(args: list[Any], where: str) -> Applied:
    """`[enable, checkpoint, switch_at]` (`refiner.py`): read where the refiner is planned
    (`engine.translate.refiner.refiner_plan`, the top-level fields winning there too), so nothing here."""
    return Applied()


def _extra_options(args: list[Any], where: str) -> Applied:
    """`Extra options` holds one control per setting named in A1111's `extra_options_txt2img/img2img`,
    which is empty by default: A1111 then ignores every arg."""
    if not args:
        return Applied()
    return Applied(warnings=[f"{where}: ignored, as A1111 does with its default (empty) extra options "
                             "section; send such settings in override_settings"])


def _no_args(title: str) -> Callable[[list[Any], str], Applied]:
    """Scripts whose UI has no controls (they read A1111 options): any args are ignored, as in A1111."""

    def read(args: list[Any], where: str) -> Applied:
        if not args:
            return Applied()
        return Applied(warnings=[f"{where}: ignored; {title} takes no args (A1111 reads its options)"])

    return read


def _refused_when_enabled(what: str) -> Callable[[list[Any], str], Applied]:
    """Scripts that change the image in ways this worker does not reproduce: fine while disabled."""

    def read(args: list[Any], where: str) -> Applied:
        if _flag(_arg(args, 0, False)):
            raise UnsupportedError(f"{where}[0]", f"{what} is not supported; send false to disable it")
        return Applied()

    return read


def _tiled_vae(args: list[Any], where: str) -> Applied:
    """multidiffusion-upscaler's `Tiled VAE`: `[enabled, encoder_tile_size, decoder_tile_size, vae_to_gpu,
    fast_decoder, fast_encoder, color_fix]`. A memory saver meant to leave the image as it is: it maps onto
    this worker's blended VAE tiles at the decoder's tile size (latent pixels × 8). Its GroupNorm estimate
    ("fast" modes) and colour fix are not reproduced, which a warning says."""
    if not _flag(_arg(args, 0, False)):
        return Applied()
    decoder_tile = _number(_arg(args, 2, 128), f"{where}[2]", int)
    if not 16 <= decoder_tile <= 512:
        raise RequestError(f"{where}[2]", f"decoder tile size must be 16–512 latent pixels, got {decoder_tile}")
    tile = decoder_tile * 8
    tiling = VaeTiling(above_pixels=0, tile_size=tile, overlap=tile // 4 // 8 * 8)
    return Applied(
        vae_tiling=tiling,
        warnings=[f"{where}: the VAE runs in {tile}-pixel tiles blended over {tiling.overlap} pixels "
                  "(this worker's tiling; Tiled VAE's fast GroupNorm estimate and colour fix are not used)"],
    )


# By lower-cased title, as A1111 matches `alwayson_scripts` keys.
BUILTIN_SCRIPTS: dict[str, BuiltinScript] = {
    script.title.lower(): script
    for script in (
        BuiltinScript("Refiner", _refiner),
        BuiltinScript("Seed", _seed),
        BuiltinScript("Sampler", _sampler),
        BuiltinScript("Comments", _no_args("Comments")),
        BuiltinScript("Extra options", _extra_options),
        BuiltinScript("Hypertile", _no_args("Hypertile")),
        BuiltinScript("Soft Inpainting", _refused_when_enabled("soft inpainting"), img2img_only=True),
        BuiltinScript("Tiled VAE", _tiled_vae),
        BuiltinScript("Tiled Diffusion", _refused_when_enabled("Tiled Diffusion (MultiDiffusion regions)")),
    )
}


def builtin_titles(img2img: bool) -> list[str]:
    return [script.title for script in BUILTIN_SCRIPTS.values() if img2img or not script.img2img_only]


def script_args(value: Any, where: str) -> list[Any]:
    """`{"args": [...]}` as A1111 reads it (a dict without "args" means none); a bare list is taken as args."""
    if isinstance(value, Mapping):
        value = value.get("args", [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise RequestError(f"{where}.args", f"must be a list, got {type(value).__name__}")
    return value


def apply_builtin_scripts(
    request: GenerationRequest, img2img: bool
) -> tuple[GenerationRequest, list[str], VaeTiling | None]:
    """The request with the built-in scripts' args applied to the fields the request leaves unset.

    Returns:
        The updated request, warnings (what was applied or ignored), and a VAE tiling if `Tiled VAE` asks for
        one (None: the worker's own rule).
    """
    updates: dict[str, Any] = {}
    warnings: list[str] = []
    vae_tiling = None
    for key, value in (request.alwayson_scripts or {}).items():
        script = BUILTIN_SCRIPTS.get(key.lower())
        if script is None or (script.img2img_only and not img2img):
            continue
        where = f"alwayson_scripts.{key}"
        applied = script.read(script_args(value, where), f"{where}.args")
        warnings += applied.warnings
        vae_tiling = applied.vae_tiling or vae_tiling
        taken = {name: v for name, v in applied.fields.items() if name not in request.model_fields_set}
        kept = sorted(set(applied.fields) - set(taken))
        if taken:
            listed = ", ".join(f"{name}={v!r}" for name, v in taken.items())
            warnings.append(f"{where}: applied {listed} (A1111's API ignores this UI script's args)")
        if kept:
            warnings.append(f"{where}: the request's own {', '.join(kept)} kept over the script's args")
        updates.update(taken)
    if not updates:
        return request, warnings, vae_tiling
    return request.model_copy(update=updates), warnings, vae_tiling
