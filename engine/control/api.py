"""sd-webui-controlnet's endpoints `/controlnet/model_list`, `/controlnet/module_list` and `/controlnet/detect`,
each a function (catalog, payload) → response body in its shape (`scripts/api.py`)."""

import base64
import io
import logging
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from engine.control.inputs import to_rgb
from engine.control.maps.registry import MapTools, detect_map
from engine.control.modules import FACE_EMBEDDING, IMAGE_PROMPT, MASK_REQUIRED, find_module, sorted_modules
from engine.control.preprocess import FaceFinder, to_rgb_array
from engine.errors import RequestError, UnsupportedError
from engine.imaging.decode import DEFAULT_LIMITS, check_image_count, decode_image
from engine.imaging.limits import ImageLimits
from engine.imaging.png import png_base64


logger = logging.getLogger(__name__)

TRUE_WORDS = ("true", "1", "yes")


def model_list(catalog, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """`GET /controlnet/model_list?update=true`: every model of the ControlNet folder as "stem [hash]"."""
    if _flag((payload or {}).get("update", True)):
        catalog.refresh("controlnet")
    return {"model_list": [entry.title for entry in catalog.controlnets()]}


def module_list(catalog, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """`GET /controlnet/module_list?alias_names=false`: the supported preprocessors in sd-webui-controlnet's order,
    by name (or by UI label with `alias_names=true`), and their visible sliders."""
    labels = _flag((payload or {}).get("alias_names", False))
    ordered = [(spec.title if labels else spec.name, spec) for spec in sorted_modules()]
    return {"module_list": [key for key, _ in ordered], "module_detail": {key: spec.detail() for key, spec in ordered}}


def detect(catalog, payload: dict[str, Any], models=None, limits: ImageLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """`POST /controlnet/detect`: run a preprocessor on images. Map modules answer `{"info", "images"}` (the
    maps at the preprocessor's scale, base64 PNG; inpaint modules their RGB part), the openpose modules also
    "poses" (one OpenPose JSON per image); the face embedding answers `{"info", "tensor"}` (each a base64
    `torch.save` of the raw 512-d vector), as sd-webui-controlnet does.

    Args:
        catalog: the models catalog (for the annotator and insightface folders when `models` is not given).
        payload: {controlnet_module, controlnet_input_images, controlnet_processor_res,
            controlnet_threshold_a, controlnet_threshold_b, controlnet_masks, low_vram}.
        models: the engine's `ControlModels`, whose face analyser and annotators are reused.
    """
    module = find_module(payload.get("controlnet_module", "none"), "controlnet_module")
    if module.output == IMAGE_PROMPT:
        raise UnsupportedError("controlnet_module", f"{module.name!r} feeds an IP-Adapter during generation; "
                                                    "/controlnet/detect does not run the IP-Adapter modules")
    images = payload.get("controlnet_input_images") or []
    if not isinstance(images, list) or not images:
        raise RequestError("controlnet_input_images", "no image given: a list of base64 images is required")
    check_image_count(images, "controlnet_input_images", limits)
    masks = payload.get("controlnet_masks") or []
    for field, texts in (("controlnet_input_images", images), ("controlnet_masks", masks)):
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise RequestError(field, f"must be a list of base64 image strings, got {texts!r:.60}")
    if module.mask == MASK_REQUIRED and len(masks) != len(images):
        raise RequestError("controlnet_masks", f"module {module.name!r} needs one mask per input image")
    resolution = _slider(module.resolution, payload.get("controlnet_processor_res", -1))
    thresholds = (_slider(module.threshold_a, payload.get("controlnet_threshold_a", -1)),
                  _slider(module.threshold_b, payload.get("controlnet_threshold_b", -1)))
    faces = FaceFinder(_face_analyser(catalog, models))
    poses: list[dict] = []
    # sd-webui-controlnet answers "poses" for every module whose name says openpose.
    tools = MapTools(detectors=_detectors(catalog, models), faces=faces,
                     on_pose=poses.append if "openpose" in module.name else None)
    results = []
    for index, text in enumerate(images):
        field = f"controlnet_input_images[{index}]"
        image = to_rgb_array(to_rgb(decode_image(text, field, limits)[0]))
        if module.output == FACE_EMBEDDING:
            results.append(_tensor_base64(faces(image, int(resolution), field).face.embedding))
            continue
        if module.mask == MASK_REQUIRED:
            mask = decode_image(masks[index], f"controlnet_masks[{index}]", limits)[0].convert("RGB")
            image = np.concatenate([image, np.asarray(mask)[:, :, :1]], axis=2)
        detected = detect_map(module.name, image, resolution, thresholds, replace(tools, field=field))
        results.append(png_base64(Image.fromarray(detected[:, :, :3]), None))
    key = "tensor" if module.output == FACE_EMBEDDING else "images"
    return {"info": "Success", **({"poses": poses} if poses else {}), key: results}


def _detectors(catalog, models):
    """The engine's annotators, else a store made for this call on first use."""
    if models is not None:
        return models.annotator
    stores = []

    def detector(name: str, field: str = "controlnet_module"):
        from engine.control.maps.annotators import AnnotatorStore

        if not stores:
            stores.append(AnnotatorStore(catalog.root))
        return stores[0].get(name, field)

    return detector


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
