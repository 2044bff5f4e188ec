"""Face analysis for ReActor: insightface's buffalo_l pack from the models folder (detector, ArcFace
recogniser, gender/age), run as ReActor runs it.

ReActor (Gourieff/sd-webui-reactor `scripts/reactor_swapper.py` `analyze_faces` / `get_face_single`, AGPL-3.0)
builds `FaceAnalysis(name="buffalo_l", root=models/insightface)`, detects at 640 × 640 with the request's
threshold and face limit, and when no face is found tries once more at 320 × 320. Here the pack's models are
loaded once by insightface's `FaceAnalysis` (as InstantID's antelopev2, `engine.control.faces`) and each call
passes its threshold and size to the detector, so the shared analyser is never re-prepared per request.
"""

import logging
from pathlib import Path

import numpy as np

from engine.control.faces import PROVIDERS, pack_folder
from engine.errors import NotFoundError


logger = logging.getLogger(__name__)

PACK_NAME = "buffalo_l"
PACK_FOLDER = Path("insightface") / "models" / PACK_NAME
NEEDED_TASKS = ("detection", "recognition", "genderage")
DETECTION_SIZE = (640, 640)
RETRY_SIZE = (320, 320)  # ReActor's `half_det_size`, tried once when nothing is found at 640


def find_buffalo_l(models_root: Path) -> Path:
    """The folder holding the buffalo_l ONNX files under `models_root`.

    Raises:
        NotFoundError: neither candidate folder holds ONNX files.
    """
    folder = pack_folder(models_root, PACK_NAME)
    if folder is not None:
        return folder
    raise NotFoundError("alwayson_scripts.reactor", f"ReActor needs insightface's {PACK_NAME} face models "
                                                    f"(det_10g.onnx, w600k_r50.onnx, genderage.onnx) in "
                                                    f"{Path(models_root) / PACK_FOLDER}; run download_models.py "
                                                    "--only reactor")


class BuffaloAnalyser:
    """buffalo_l's detector, recogniser and gender/age model, loaded once; `faces` is safe to call from
    several threads (the models' sessions are, and nothing is re-prepared)."""

    def __init__(self, pack: Path, device_type: str = "cpu"):
        from insightface.app import FaceAnalysis  # deferred: insightface imports onnx, scikit-image, cv2

        self.pack = Path(pack)
        providers = PROVIDERS["cuda" if device_type == "cuda" else "cpu"]
        app = FaceAnalysis(name=str(self.pack), providers=providers, allowed_modules=list(NEEDED_TASKS))
        missing = [task for task in NEEDED_TASKS if task not in app.models]
        if missing:
            raise NotFoundError("alwayson_scripts.reactor", f"{self.pack} has no {' or '.join(missing)} model "
                                                            "(ReActor needs buffalo_l's det_10g.onnx, "
                                                            "w600k_r50.onnx and genderage.onnx)")
        app.prepare(ctx_id=0 if device_type == "cuda" else -1, det_size=DETECTION_SIZE)
        self._models = app.models
        logger.info("face swap analysis: %s with %s", self.pack, providers[0])

    def faces(self, bgr: np.ndarray, threshold: float = 0.5, max_faces: int = 0) -> list:
        """insightface `Face`s (bbox, kps, det_score, embedding, gender, age) on a BGR uint8 image, detected at
        640 × 640, else at 320 × 320 as ReActor retries; `max_faces` 0 keeps all."""
        from insightface.app.common import Face

        detector = self._models["detection"]
        for size in (DETECTION_SIZE, RETRY_SIZE):
            boxes, keypoints = detector.detect(bgr, input_size=size, max_num=max_faces, det_thresh=threshold)
            if boxes.shape[0]:
                break
        faces = []
        for box, points in zip(boxes, keypoints, strict=True):
            face = Face(bbox=box[:4], kps=points, det_score=box[4])
            self._models["recognition"].get(bgr, face)
            self._models["genderage"].get(bgr, face)
            faces.append(face)
        return faces
