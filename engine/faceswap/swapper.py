"""The swap model (insightface's `INSwapper`, e.g. inswapper_128.onnx) and ReActor's saved face models.

ReActor (Gourieff/sd-webui-reactor `reactor_swapper.py`, AGPL-3.0) loads the model with
`insightface.model_zoo.get_model(models/insightface/<model>)` and calls `INSwapper.get(image, target_face,
source_face, paste_back=True)` once per face pair on the accumulating BGR image; so does this module.
"""

import logging
from pathlib import Path

import numpy as np

from engine.control.faces import PROVIDERS
from engine.errors import ModelFileError


logger = logging.getLogger(__name__)

# ReActor keeps face models (one analysed face, saved as safetensors) here, relative to the models folder.
FACE_MODELS_FOLDER = Path("reactor") / "faces"
FACE_MODEL_KEYS = ("bbox", "kps", "det_score", "embedding", "gender", "age")


class FaceSwapper:
    """One loaded swap model. Its onnxruntime session is safe to share between threads."""

    def __init__(self, path: Path, device_type: str = "cpu"):
        from insightface import model_zoo  # deferred: insightface imports onnx, scikit-image, cv2
        from insightface.model_zoo.inswapper import INSwapper

        self.path = Path(path)
        providers = PROVIDERS["cuda" if device_type == "cuda" else "cpu"]
        model = model_zoo.get_model(str(self.path), providers=providers)
        if not isinstance(model, INSwapper):
            raise ModelFileError(self.path.name, "is not an insightface swap model (INSwapper takes a 128 × 128 "
                                                 "face and a 512-number identity)")
        self._model = model
        logger.info("face swap model: %s with %s", self.path.name, providers[0])

    def swap(self, bgr: np.ndarray, pairs, face_mask=None) -> np.ndarray:
        """`bgr` with each pair's source identity put on its target face, pasted back with insightface's
        blended mask (and, given a `engine.faceswap.face_mask.FaceMask`, through it too); later pairs see the
        earlier swaps, as in ReActor."""
        for pair in pairs:
            swapped = self._model.get(bgr, pair.target, pair.source, paste_back=True)
            bgr = swapped if face_mask is None else face_mask.paste(swapped, bgr, pair.target.bbox)
        return bgr


def load_face_model(path: Path):
    """A ReActor face model (`models/reactor/faces/*.safetensors`: one insightface face's fields) as an
    insightface `Face` the swapper can take as its source."""
    from insightface.app.common import Face
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, ValueError) as exc:
        raise ModelFileError(path.name, f"is not a ReActor face model ({exc})") from None
    if "embedding" not in tensors:
        raise ModelFileError(path.name, "is not a ReActor face model: it has no embedding")
    values = {key: tensors[key] for key in FACE_MODEL_KEYS if key in tensors}
    for key in ("gender", "age"):
        if key in values:
            values[key] = int(values[key])
    values["embedding"] = values["embedding"].astype(np.float32).reshape(-1)
    return Face(**values)
