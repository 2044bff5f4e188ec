"""The A1111 endpoints that do not generate: each a function (engine, payload) → response body."""

import logging
import os
from typing import Any

from engine import samplers as sampler_table


logger = logging.getLogger(__name__)


# --- models on disk ----------------------------------------------------------------------------------------


def sd_models(engine, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """`GET /sdapi/v1/sd-models`: hashes only where already known (A1111 does not hash on listing)."""
    listed = []
    for entry in engine.catalog.checkpoints():
        sha256 = None if entry.is_folder else entry.hashes.peek(entry.path, "sha256")
        listed.append(
            {
                "title": entry.title,
                "model_name": entry.model_name,
                "hash": sha256[:10] if sha256 else None,
                "sha256": sha256,
                "filename": str(entry.path),
                "config": str(entry.config) if entry.config else None,
            }
        )
    return listed


def sd_vae(engine, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """`GET /sdapi/v1/sd-vae`: A1111's `vae_dict`, keyed by file name with extension."""
    return [{"model_name": entry.name, "filename": str(entry.path)} for entry in engine.catalog.vaes()]


def loras(engine, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """`GET /sdapi/v1/loras` (A1111's Lora extension): name, alias (`ss_output_name`), path, metadata."""
    return [
        {"name": entry.name, "alias": entry.alias, "path": str(entry.path), "metadata": entry.metadata}
        for entry in engine.catalog.loras()
    ]


def embeddings(engine, payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`GET /sdapi/v1/embeddings`: every readable embedding under "loaded", unreadable files under "skipped".

    A1111 lists only the embeddings that fit the loaded model as loaded; here the model is chosen per request,
    so every readable file is listed (a prompt naming one that does not fit its model gets a note).
    """
    from engine.prompts.embeddings import EmbeddingFormatError, load_embedding

    loaded, skipped = {}, {}
    for entry in engine.catalog.entries("embeddings"):
        try:
            embedding = load_embedding(entry)
        except EmbeddingFormatError as exc:
            logger.info("embeddings listing: skipping %s: %s", entry.path, exc)
            skipped[entry.stem] = _embedding_item(None, None)
            continue
        loaded[embedding.name] = _embedding_item(embedding.width, embedding.count)
    return {"loaded": loaded, "skipped": skipped}


def _embedding_item(shape: int | None, vectors: int | None) -> dict[str, Any]:
    # A1111 also reports the training step and checkpoint stored in .pt files; this worker does not read them.
    return {
        "step": None,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
        "shape": shape,
        "vectors": vectors,
    }


def hypernetworks(engine, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """`GET /sdapi/v1/hypernetworks`: `{name, path}` per hypernetwork; none, this worker does not run them."""
    return []


def cmd_flags(engine, payload: dict[str, Any]) -> dict[str, Any]:
    """`GET /sdapi/v1/cmd-flags`: A1111's command-line flags (`vars(cmd_opts)`), those that describe this worker:
    where its models are, the API-only mode, precision."""
    from engine.prompts.styles import styles_file_candidates

    settings = engine.settings
    root = settings.models_dir
    return {
        "data_dir": str(root.parent),
        "models_dir": str(root),
        "ckpt_dir": str(root / "Stable-diffusion"),
        "vae_dir": str(root / "VAE"),
        "lora_dir": str(root / "Lora"),
        "embeddings_dir": str(root / "embeddings"),
        "esrgan_models_path": str(root / "ESRGAN"),
        "realesrgan_models_path": str(root / "RealESRGAN"),
        "hypernetwork_dir": str(root / "hypernetworks"),
        "styles_file": styles_file_candidates(root, settings.styles_file),
        "api": True,
        "nowebui": True,
        "allow_code": False,
        "no_half": engine.precision.device.type != "cuda",
        "no_half_vae": engine.precision.device.type != "cuda",
        "lowvram": False,
        "medvram": False,
        "medvram_sdxl": False,
        "xformers": False,
        "opt_sdp_attention": True,
    }


def refresh_checkpoints(engine, payload: dict[str, Any]) -> None:
    engine.catalog.refresh("checkpoints")


def refresh_vae(engine, payload: dict[str, Any]) -> None:
    engine.catalog.refresh("vae")


def refresh_loras(engine, payload: dict[str, Any]) -> None:
    engine.catalog.refresh("lora")


def refresh_embeddings(engine, payload: dict[str, Any]) -> None:
    engine.catalog.refresh("embeddings")


def ad_model(engine, payload: dict[str, Any]) -> dict[str, list[str]]:
    """`GET /adetailer/v1/ad_model`."""
    from engine.detailer.detect import ad_model_listing

    return ad_model_listing(engine.catalog)


# --- capabilities ------------------------------------------------------------------------------------------


def samplers(engine, payload: dict[str, Any]) -> list[dict[str, Any]]:
    return sampler_table.sampler_list()


def schedulers(engine, payload: dict[str, Any]) -> list[dict[str, Any]]:
    return sampler_table.scheduler_list()


def upscalers(engine, payload: dict[str, Any]) -> list[dict[str, Any]]:
    return engine.upscalers.listing()


def realesrgan_models(engine, payload: dict[str, Any]) -> list[dict[str, Any]]:
    return engine.upscalers.realesrgan_listing()


def latent_upscale_modes(engine, payload: dict[str, Any]) -> list[dict[str, str]]:
    from engine.upscale.latent import latent_upscale_mode_list

    return latent_upscale_mode_list()


def face_restorers(engine, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """`GET /sdapi/v1/face-restorers`: `{name, cmd_dir}` for each restorer whose weights are installed."""
    return engine.restorers.listing()


def prompt_styles(engine, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """`GET /sdapi/v1/prompt-styles`: the styles of the styles files, `{name, prompt, negative_prompt}`."""
    return engine.styles.listing()


def scripts(engine, payload: dict[str, Any]) -> dict[str, list[str]]:
    """`GET /sdapi/v1/scripts`: every script of each tab by A1111's lower-case name, selectable (`script_name`)
    and always-on (`alwayson_scripts`). Clients such as webuiapi look here to decide which extension
    arguments to send."""
    from engine.translate.common import SUPPORTED_SCRIPTS
    from engine.wire.scripts import script_names

    return {
        "txt2img": script_names(SUPPORTED_SCRIPTS, img2img=False),
        "img2img": script_names(SUPPORTED_SCRIPTS, img2img=True),
    }


def script_info(engine, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """`GET /sdapi/v1/script-info`: each script's name, tab, kind and positional args, as A1111 lists them."""
    from engine.translate.common import SUPPORTED_SCRIPTS
    from engine.wire.scripts import script_info as listing

    return listing(SUPPORTED_SCRIPTS)


# --- state -------------------------------------------------------------------------------------------------


def options(engine, payload: dict[str, Any]) -> dict[str, Any]:
    return engine.options.listing()


def set_options(engine, payload: dict[str, Any]) -> None:
    """`POST /sdapi/v1/options`: A1111 answers null. Only A1111's option names, with values of their type."""
    engine.options.set(payload)


def progress(engine, payload: dict[str, Any]) -> dict[str, Any]:
    return engine.jobs.progress()


def interrupt(engine, payload: dict[str, Any]) -> dict[str, Any]:
    """`POST /sdapi/v1/interrupt`: the running job stops at its next model call and returns its images so far."""
    engine.jobs.interrupt()
    return {}


def skip(engine, payload: dict[str, Any]) -> None:
    """`POST /sdapi/v1/skip`: the running job's current batch stops at its next model call; the job goes on.
    A1111 answers null here (and `{}` to interrupt)."""
    engine.jobs.skip()


def memory(engine, payload: dict[str, Any]) -> dict[str, Any]:
    """`GET /sdapi/v1/memory`: this process's RAM and CUDA memory in A1111's shape (bytes); a part that
    cannot be read is `{"error": ...}`, as in A1111."""
    return {"ram": _ram(), "cuda": _cuda_memory(engine)}


def _ram() -> dict[str, Any]:
    try:
        import psutil

        used = psutil.Process(os.getpid()).memory_info().rss
        total = psutil.virtual_memory().total
    except Exception as exc:  # A1111 reports any failure here in the body instead of failing the call
        return {"error": str(exc)}
    return {"free": total - used, "used": used, "total": total}


def _cuda_memory(engine) -> dict[str, Any]:
    import torch

    device = engine.precision.device
    if device.type != "cuda":
        return {"error": "unavailable"}
    free, total = torch.cuda.mem_get_info(device)
    stats = torch.cuda.memory_stats(device)

    def pair(name: str) -> dict[str, int]:
        return {"current": stats.get(f"{name}.all.current", 0), "peak": stats.get(f"{name}.all.peak", 0)}

    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": pair("active_bytes"),
        "allocated": pair("allocated_bytes"),
        "reserved": pair("reserved_bytes"),
        "inactive": pair("inactive_split_bytes"),
        "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
    }


# --- images ------------------------------------------------------------------------------------------------


def extra_single_image(engine, payload: dict[str, Any]) -> dict[str, str]:
    from engine.upscale.extras import extra_single_image as upscale

    return upscale(payload, engine.upscalers, engine.settings.max_pixels,
                   engine.settings.limits_for_images("extras"))


def png_info(engine, payload: dict[str, Any]) -> dict[str, Any]:
    """`POST /sdapi/v1/png-info`: the infotext of a PNG (text chunk) or JPEG/WEBP (EXIF UserComment), the
    image's other metadata, and the infotext parsed into A1111's parameter names."""
    from engine.imaging.decode import DEFAULT_LIMITS, open_image
    from engine.imaging.png import read_image_info
    from engine.wire.infotext import parse_infotext

    limits = engine.settings.limits_for_images("png_info") if engine is not None else DEFAULT_LIMITS
    with open_image(payload.get("image"), "image", limits) as image:
        infotext, items = read_image_info(image)
    infotext = infotext or ""
    return {"info": infotext, "items": items, "parameters": parse_infotext(infotext)}


def controlnet_model_list(engine, payload: dict[str, Any]) -> dict[str, list[str]]:
    """`GET /controlnet/model_list`: `{"model_list": ["name [hash]", …]}` as sd-webui-controlnet lists them."""
    from engine.control import api

    return api.model_list(engine.catalog, payload)


def controlnet_module_list(engine, payload: dict[str, Any]) -> dict[str, Any]:
    """`GET /controlnet/module_list`."""
    from engine.control import api

    return api.module_list(engine.catalog, payload)


def controlnet_detect(engine, payload: dict[str, Any]) -> dict[str, Any]:
    """`POST /controlnet/detect`: run a preprocessor module on images, return the maps."""
    from engine.control import api

    return api.detect(engine.catalog, payload, engine.control_models,
                      engine.settings.limits_for_images("controlnet"))


def reactor_models(engine, payload: dict[str, Any]) -> dict[str, list[str]]:
    """`GET /reactor/models`: the swap models (ONNX files directly in models/insightface), by file name."""
    return {"models": list(engine.face_swap.swap_models())}


def reactor_upscalers(engine, payload: dict[str, Any]) -> dict[str, list[str]]:
    """`GET /reactor/upscalers`: the names ReActor's upscaler arg accepts (A1111's image upscalers)."""
    return {"upscalers": [upscaler["name"] for upscaler in engine.upscalers.listing()]}


def reactor_facemodels(engine, payload: dict[str, Any]) -> dict[str, list[str]]:
    """`GET /reactor/facemodels`: ReActor's face models (models/reactor/faces), named without the extension."""
    return {"facemodels": [name.split(".")[0] for name in engine.face_swap.face_models()]}


def reactor_facemodels_build(engine, payload: dict[str, Any]) -> dict[str, list[str]]:
    """`POST /reactor/facemodels`: a face model blended from `source_images`, saved as `name`; the face models."""
    from engine.faceswap.blend import build_face_model

    return build_face_model(engine, payload)


def reactor_image(engine, payload: dict[str, Any]) -> dict[str, str]:
    """`POST /reactor/image`: ReActor on one target image, `{"image": base64}`."""
    from engine.faceswap.api import swap_image

    return swap_image(engine, payload)
