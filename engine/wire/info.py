"""A1111's `info` JSON and per-image infotext (`processing.create_infotext`, `Processed.js`)."""

import json
from dataclasses import dataclass, field
from typing import Any


VERSION = "a1111-diffusers-worker 0.1.0"


@dataclass(frozen=True)
class ImageRecord:
    """What the infotext says about one output image."""

    prompt: str
    negative_prompt: str
    seed: int
    subseed: int


@dataclass(frozen=True)
class InfotextFields:
    """The request-wide values of A1111's infotext, already in A1111's vocabulary."""

    steps: int
    sampler: str  # the split display name, e.g. "DPM++ SDE"
    schedule_type: str | None  # the schedule label, e.g. "Karras"
    cfg_scale: float
    width: int  # as requested (A1111 prints the unfloored size)
    height: int
    model_hash: str | None
    model_name: str | None
    vae_hash: str | None = None
    vae_name: str | None = None
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] = (0, 0)
    clip_skip: int = 1
    ensd: int | None = None  # only for samplers that use it
    rng: str = "GPU"
    face_restoration: str | None = None  # the restorer's name when restore_faces is on
    tiling: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # A1111's extra_generation_params, in order


def infotext(fields: InfotextFields, image: ImageRecord) -> str:
    """`prompt\\nNegative prompt: …\\nSteps: …, Sampler: …` in A1111's key order, None values omitted."""
    params: dict[str, Any] = {
        "Steps": fields.steps,
        "Sampler": fields.sampler,
        "Schedule type": fields.schedule_type,
        "CFG scale": fields.cfg_scale,
        "Seed": image.seed,
        "Face restoration": fields.face_restoration,
        "Size": f"{fields.width}x{fields.height}",
        "Model hash": fields.model_hash,
        "Model": fields.model_name,
        "VAE hash": fields.vae_hash,
        "VAE": fields.vae_name,
        "Variation seed": image.subseed if fields.subseed_strength else None,
        "Variation seed strength": fields.subseed_strength or None,
        "Seed resize from": "{}x{}".format(*fields.seed_resize_from)
        if all(fields.seed_resize_from)
        else None,
        "Denoising strength": None,  # A1111 reserves its place here; extra params fill it in
        "Conditional mask weight": None,  # likewise, filled for inpainting models
        "Clip skip": fields.clip_skip if fields.clip_skip > 1 else None,
        "ENSD": fields.ensd or None,
        "RNG": fields.rng if fields.rng != "GPU" else None,
        "Tiling": "True" if fields.tiling else None,
    }
    # A key already present keeps its place and only takes the new value (plain dict update).
    params.update(fields.extra)
    params["Version"] = VERSION
    settings = ", ".join(f"{key}: {quote(value)}" for key, value in params.items() if value is not None)
    negative = f"\nNegative prompt: {image.negative_prompt}" if image.negative_prompt else ""
    return f"{image.prompt}{negative}\n{settings}"


def quote(value: Any) -> str:
    """A1111 `infotext_utils.quote`: JSON-quote values that contain a separator."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def info_json(
    fields: InfotextFields,
    images: list[ImageRecord],
    *,
    styles: list[str],
    batch_size: int,
    job_timestamp: str,
    denoising_strength: float | None = None,
    extra_keys: dict[str, Any] | None = None,
    image_count: int | None = None,
) -> str:
    """The response's `info`: a JSON *string* with `Processed.js()`'s keys. `image_count`: how many of the
    planned `images` were made (an interrupted job has fewer); A1111 keeps every planned prompt and seed in
    the `all_*` lists and gives infotexts for the images made only."""
    first = images[0]
    info = {
        "prompt": first.prompt,
        "all_prompts": [image.prompt for image in images],
        "negative_prompt": first.negative_prompt,
        "all_negative_prompts": [image.negative_prompt for image in images],
        "seed": first.seed,
        "all_seeds": [image.seed for image in images],
        "subseed": first.subseed,
        "all_subseeds": [image.subseed for image in images],
        "subseed_strength": fields.subseed_strength,
        "width": fields.width,
        "height": fields.height,
        "sampler_name": fields.sampler,
        "cfg_scale": fields.cfg_scale,
        "steps": fields.steps,
        "batch_size": batch_size,
        "restore_faces": fields.face_restoration is not None,
        "face_restoration_model": fields.face_restoration,
        "sd_model_name": fields.model_name,
        "sd_model_hash": fields.model_hash,
        "sd_vae_name": fields.vae_name,
        "sd_vae_hash": fields.vae_hash,
        "seed_resize_from_w": fields.seed_resize_from[0] or -1,
        "seed_resize_from_h": fields.seed_resize_from[1] or -1,
        "denoising_strength": denoising_strength,
        "extra_generation_params": dict(fields.extra),
        "index_of_first_image": 0,
        "infotexts": [infotext(fields, image) for image in images[:image_count]],
        "styles": styles,
        "job_timestamp": job_timestamp,
        "clip_skip": fields.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": VERSION,
        **(extra_keys or {}),
    }
    return json.dumps(info, ensure_ascii=False)
