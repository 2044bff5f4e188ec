"""ReActor's `POST /reactor/facemodels`: one face model blended from several source images, saved where face
models live (`models/reactor/faces/<name>.safetensors`) for `select_source` 1 to swap with.

Re-implemented from Gourieff/sd-webui-reactor (AGPL-3.0): `scripts/reactor_api.py` `reactor_facemodels_build`,
`scripts/reactor_swapper.py` `blend_faces` / `build_face_model` and `scripts/reactor_helpers.py`
`save_face_model`. Each image's first detected face (the detector's best score, found at 640 × 640 or else at
320 × 320) gives an ArcFace embedding; images without a face are skipped. The face model is the first face with
its embedding replaced by the element-wise mean (compute method 0), median (1) or mode (2) of them all. This is
ReActor's only blending of several source images: its multiple-source swap does not blend.
"""

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import RequestError


logger = logging.getLogger(__name__)

COMPUTE_METHODS = {0: "Mean", 1: "Median", 2: "Mode"}
# A face model name becomes a file name in models/reactor/faces: no folders, nothing hidden.
NAME = re.compile(r"^[\w][\w .()+-]{0,99}$")


def blend_embeddings(embeddings: list[np.ndarray], method: int) -> np.ndarray:
    """ReActor's blended embedding: mean, median or (SciPy's) mode of each of the 512 numbers."""
    stacked = np.stack(embeddings)
    if method == 0:
        return np.mean(stacked, axis=0)
    if method == 1:
        return np.median(stacked, axis=0)
    from scipy import stats

    return stats.mode(stacked, axis=0)[0].astype(np.float32)


def build_face_model(engine, payload: dict[str, Any]) -> dict[str, list[str]]:
    """Analyse `source_images`, save the blended face model as `name`, and list the face models as
    `GET /reactor/facemodels` does.

    Raises:
        RequestError: a bad name, compute method or image, or no face in any image (ReActor logs "No faces
            found" and saves nothing).
    """
    from safetensors.numpy import save_file

    from engine.faceswap.swapper import FACE_MODELS_FOLDER
    from engine.imaging.decode import check_image_count, decode_image

    name = payload.get("name", "")
    if not isinstance(name, str) or not NAME.match(name) or name.endswith("."):
        raise RequestError("name", "must be a face model name: letters, digits, spaces and . ( ) + - _, without "
                                   f"folders (got {name!r:.60})")
    method = payload.get("compute_method", 0)
    if isinstance(method, bool) or method not in COMPUTE_METHODS:
        listed = ", ".join(f"{number} ({label})" for number, label in COMPUTE_METHODS.items())
        raise RequestError("compute_method", f"must be one of {listed}, got {method!r:.40}")
    images = payload.get("source_images", [""])
    if not isinstance(images, list) or not images:
        raise RequestError("source_images", "must be a list of base64-encoded images")
    limits = engine.settings.limits_for_images("reactor")
    check_image_count(images, "source_images", limits)
    analyser = engine.face_swap.cpu_analyser()
    faces = []
    for number, text in enumerate(images):
        image, _ = decode_image(text, f"source_images[{number}]", limits)
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        found = analyser.faces(bgr)
        if found:
            faces.append(found[0])
        else:
            logger.info("ReActor face model %r: no face in source image %d, skipped", name, number + 1)
    if not faces:
        raise RequestError("source_images", "no face found in any of the images")
    first = faces[0]
    # ReActor's `save_face_model` keys; the landmarks and pose are left out: this worker's analyser does not
    # load buffalo_l's landmark models, and the swap reads only the embedding.
    fields = {"bbox": first.bbox, "kps": first.kps, "det_score": first.det_score,
              "embedding": blend_embeddings([face.embedding for face in faces], method),
              "gender": first.gender, "age": first.age}
    folder = engine.face_swap.catalog.root / FACE_MODELS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    partial = path.with_name(path.name + ".partial")  # listings see the file whole or not at all
    save_file({key: np.array(value) for key, value in fields.items()}, str(partial))  # scalars stay 0-d
    os.replace(partial, path)
    logger.info("ReActor face model %s: %s of %d face(s)", path.name, COMPUTE_METHODS[method], len(faces))
    return {"facemodels": [Path(item).name.split(".")[0] for item in engine.face_swap.face_models()]}
