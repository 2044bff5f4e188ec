"""Every model a plan names: resolved by name before any work, then loaded (or taken from the cache)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.detailer.mediapipe import is_mediapipe_model, mediapipe_model_file
from engine.errors import UnsupportedError
from engine.generate import Models
from engine.plan import GenerationPlan
from engine.resources.entries import CheckpointEntry, VaeEntry


@dataclass(frozen=True)
class ResolvedModels:
    """The files a plan runs on, found by name (A1111 resolves them lazily and fails mid-request)."""

    checkpoint: CheckpointEntry
    vae: VaeEntry | None  # the base checkpoint's external VAE (`sd_vae`), None for its own
    upscaler: Any = None  # hires fix's upscaler
    hires: CheckpointEntry | None = None  # `hr_checkpoint_name`
    refiner: CheckpointEntry | None = None  # `refiner_checkpoint`
    detectors: tuple[Path, ...] = ()  # one per ADetailer unit
    detailer_checkpoints: tuple[CheckpointEntry | None, ...] = ()  # `ad_checkpoint` per unit
    # `ad_vae` per unit: None = the generation's VAE for the unit's checkpoint, else (VAE or None = baked-in,).
    detailer_vaes: tuple[tuple[VaeEntry | None] | None, ...] = ()


def resolve_models(engine, plan: GenerationPlan, checkpoint: CheckpointEntry) -> ResolvedModels:
    """Find every model file the plan names, so a wrong name fails before any work.

    Args:
        engine: the `Engine` (its catalog, upscalers and VAEs).
        plan: the request's plan.
        checkpoint: the base checkpoint, already resolved.

    Raises:
        NotFoundError: a name that matches nothing, naming its field and the choices.
    """
    catalog = engine.catalog
    hires = plan.hires
    _check_restorers(engine, plan)
    detailer_checkpoints = tuple(
        catalog.find_checkpoint(
            unit.checkpoint, unit.model_field.replace("ad_model", "ad_checkpoint"), closest=True
        )
        if unit.checkpoint
        else None
        for unit in plan.detailers
    )
    _check_face_swap(engine, plan)
    return ResolvedModels(
        checkpoint=checkpoint,
        vae=engine.vaes.resolve(plan.vae, checkpoint),
        upscaler=engine.upscalers.get(hires.upscaler, field="hr_upscaler") if hires else None,
        # A1111 matches both with `get_closet_checkpoint_match`.
        hires=catalog.find_checkpoint(hires.checkpoint, "hr_checkpoint_name", closest=True)
        if hires and hires.checkpoint
        else None,
        refiner=catalog.find_checkpoint(plan.refiner.checkpoint, "refiner_checkpoint", closest=True)
        if plan.refiner
        else None,
        detectors=tuple(
            mediapipe_model_file(engine.settings.models_dir, unit.model, unit.model_field)
            if is_mediapipe_model(unit.model)
            else catalog.find_file("adetailer", unit.model, unit.model_field).path
            for unit in plan.detailers
        ),
        detailer_checkpoints=detailer_checkpoints,
        detailer_vaes=tuple(
            _detailer_vae(engine, unit, entry or checkpoint) for unit, entry in zip(
                plan.detailers, detailer_checkpoints, strict=True
            )
        ),
    )


def _detailer_vae(engine, unit, checkpoint: CheckpointEntry) -> tuple[VaeEntry | None] | None:
    """ADetailer's `ad_vae` as A1111 resolves the `sd_vae` override of its inner img2img, for the checkpoint
    that pass runs on; None when the unit keeps the generation's VAE."""
    if unit.vae is None:
        return None
    return (engine.vaes.resolve(unit.vae, checkpoint, unit.model_field.replace("ad_model", "ad_vae")),)


def _check_restorers(engine, plan: GenerationPlan) -> None:
    """Face restorers by name: their files are checked now, loaded under the generation lock."""
    for restoration in (plan.face_restoration, *(unit.face_restoration for unit in plan.detailers)):
        if restoration is not None:
            engine.restorers.resolve(restoration.model, restoration.field)


def _check_face_swap(engine, plan: GenerationPlan) -> None:
    """ReActor's swap model, analysis pack, face model, restorer and upscaler: found by name now."""
    args = plan.face_swap
    if args is None:
        return
    from engine.faceswap.args import field

    engine.face_swap.resolve(args)
    if args.face_restorer is not None:
        engine.restorers.resolve(args.face_restorer, field("face_restorer"))
    if args.upscaler is not None:
        engine.upscalers.pixel(args.upscaler, field("upscaler"))


def _restorer(engine, restoration):
    return None if restoration is None else engine.restorers.get(restoration.model, restoration.field)


def load_models(engine, plan: GenerationPlan, resolved: ResolvedModels) -> Models:
    """Load (or fetch from the resident cache) everything the plan runs on; call under the generation lock.

    Every checkpoint decodes with the request's `sd_vae` as A1111 resolves it for that checkpoint (a named
    VAE for all; "Automatic" finds each one's own VAE file), through a view: shared pipelines never change.
    """
    base = engine.vaes.pipeline_for(
        engine.pipelines.get(resolved.checkpoint), resolved.vae, resolved.checkpoint
    )

    def other(entry: CheckpointEntry | None):
        if entry is None or entry == resolved.checkpoint:
            return None
        vae = engine.vaes.resolve(plan.vae, entry)
        return engine.vaes.pipeline_for(engine.pipelines.get(entry), vae, entry)

    refiner = other(resolved.refiner) if resolved.refiner else None
    if resolved.refiner == resolved.checkpoint:
        refiner = base  # A1111 never switches: the pass already runs on the refiner checkpoint
    if refiner is not None:
        _check_refiner(refiner, base, resolved.refiner)
    def detailer_pipe(entry: CheckpointEntry | None, vae: tuple[VaeEntry | None] | None):
        if vae is None:
            return other(entry) or base
        # The unit's own VAE on its checkpoint, restored after the pass (A1111 restores override_settings):
        # a view, so the pipelines of the other passes keep theirs.
        entry = entry or resolved.checkpoint
        return engine.vaes.pipeline_for(engine.pipelines.get(entry), vae[0], entry)

    detailers = tuple(
        (
            unit,
            detailer_pipe(entry, vae),
            engine.detectors.for_unit(unit.model, path, unit.model_field),
            _restorer(engine, unit.face_restoration),
        )
        for unit, entry, vae, path in zip(
            plan.detailers, resolved.detailer_checkpoints, resolved.detailer_vaes or (None,) * len(plan.detailers),
            resolved.detectors, strict=True
        )
    )
    return Models(
        base=base,
        hires=other(resolved.hires),
        refiner=refiner,
        refiner_title=resolved.refiner.short_title if resolved.refiner else None,
        upscaler=resolved.upscaler,
        embeddings=engine.embeddings,
        detailers=detailers,
        restorer=_restorer(engine, plan.face_restoration),
    )


def _check_refiner(refiner, base, entry: CheckpointEntry) -> None:
    """The refiner must continue the base's latents: the same latent space, a plain (4-channel) UNet."""
    if refiner.is_sdxl != base.is_sdxl:
        raise UnsupportedError(
            "refiner_checkpoint",
            f"{entry.name} ({refiner.family}) cannot continue the latents of a {base.family} checkpoint: "
            "SDXL is refined by the SDXL refiner or another SDXL model, SD1.5 by SD1.5",
        )
    if refiner.is_inpainting:
        raise UnsupportedError(
            "refiner_checkpoint", f"{entry.name}: an inpainting checkpoint cannot be a refiner"
        )
