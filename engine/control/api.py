"""sd-webui-controlnet's endpoints `/controlnet/model_list`, `/controlnet/module_list` and `/controlnet/detect`,
each a function (catalog, payload) → response body in its shape (`scripts/api.py`)."""

import base64
import io
import logging
from typing import Any

from PIL import Image

from engine.control.modules import FACE_EMBEDDING, MODULES, find_module
from engine.control.preprocess import FaceFinder, detect_map, to_rgb_array
from engine.control.units import decode_base64_image
from engine.errors import RequestError, UnsupportedError
from engine.imaging.png import png_base64


logger = logging.getLogger(__name__)

TRUE_WORDS = ("true", "1", "yes")


def model_list(catalog, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """`GET /controlnet/model_list?update=true`: every model of the ControlNet folder as "stem [hash]"."""
    if _flag((payload or {}).get("update", True)):
        catalog.refresh("controlnet")
    return {"model_list": [entry.title for entry in catalog.controlnets()]}


def module_list(catalog, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """`GET /controlnet/module_list?alias_names=false`: the supported preprocessors and their sliders (labels
    and names coincide for these modules, so `alias_names` changes nothing)."""
    return {"module_list": list(MODULES), "module_detail": {name: spec.detail() for name, spec in MODULES.items()}}


def detect(catalog, payload: dict[str, Any], models=None) -> dict[str, Any]:
    """`POST /controlnet/detect`: run a preprocessor on images. Map modules answer `{"info", "images"}` (the
    maps at the preprocessor's scale, base64 PNG); the face embedding answers `{"info", "tensor"}` (each a
    base64 `torch.save` of the raw 512-d vector), as sd-webui-controlnet does.

    Args:
        catalog: the models catalog (for the insightface models' folder when `models` is not given).
        payload: {controlnet_module, controlnet_input_images, controlnet_processor_res,
            controlnet_threshold_a, controlnet_threshold_b, controlnet_masks, low_vram}.
        models: the engine's `ControlModels`, whose face analyser is reused; else one is made for this call.
    """
    module = find_module(payload.get("controlnet_module", "none"), "controlnet_module")
    images = payload.get("controlnet_input_images") or []
    if not isinstance(images, list) or not images:
        raise RequestError("controlnet_input_images", "no image given: a list of base64 images is required")
    if payload.get("controlnet_masks"):
        raise UnsupportedError("controlnet_masks", "masks are used only by inpainting modules, not supported")
    resolution = int(_slider(module.resolution, payload.get("controlnet_processor_res", -1)))
    thresholds = (_slider(module.threshold_a, payload.get("controlnet_threshold_a", -1)),
                  _slider(module.threshold_b, payload.get("controlnet_threshold_b", -1)))
    faces = FaceFinder(_face_analyser(catalog, models))
    results = []
    for index, text in enumerate(images):
        field = f"controlnet_input_images[{index}]"
        image = to_rgb_array(decode_base64_image(text, field))
        if module.output == FACE_EMBEDDING:
            results.append(_tensor_base64(faces(image, resolution, field).face.embedding))
        else:
            detected = detect_map(module.name, image, resolution, thresholds, faces, field)
            results.append(png_base64(Image.fromarray(detected), None))
    key = "tensor" if module.output == FACE_EMBEDDING else "images"
    return {"info": "Success", key: results}


def _slider(slider, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    return slider.pick(number) if slider is not None else number


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in TRUE_WORDS


def _face_analyser(catalog, models):
    if models is not None:
        return models.face_analyser

    def analyser():
        from engine.control.faces import FaceAnalyser, find_antelopev2

        return FaceAnalyser(find_antelopev2(catalog.root))

    return analyser


def _tensor_base64(embedding) -> str:
    import torch

    buffer = io.BytesIO()
    torch.save(torch.from_numpy(embedding.copy()), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
