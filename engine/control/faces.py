"""Face analysis for InstantID and the FaceID IP-Adapters: insightface's `FaceAnalysis` on a model pack from
the models folder: antelopev2 for InstantID, buffalo_l for FaceID (as sd-webui-controlnet picks them).

Only the detector (SCRFD: box + 5 keypoints) and the recogniser (ArcFace: the 512-d identity) run.
Nothing is downloaded: insightface fetches a pack only when given a name that is not a folder, and we always
give it the folder.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import NotFoundError, RequestError


logger = logging.getLogger(__name__)

PACK_NAME = "antelopev2"
FACE_ID_PACK = "buffalo_l"  # sd-webui-controlnet's `g_insight_face_model` (FaceID, FaceID Plus)
PACKS_FOLDER = Path("insightface") / "models"
PACK_FOLDER = PACKS_FOLDER / PACK_NAME
# What each pack's detector and recogniser files are called (for the error message).
PACK_FILES = {PACK_NAME: "scrfd_10g_bnkps.onnx, glintr100.onnx", FACE_ID_PACK: "det_10g.onnx, w600k_r50.onnx"}
# The download_models.py group that fetches each pack.
PACK_SOURCE = {PACK_NAME: "run download_models.py --only instantid",
               FACE_ID_PACK: "run download_models.py --only ip-adapter-faceid"}
NEEDED_TASKS = ("detection", "recognition")
DETECTION_SIZE = (640, 640)  # InstantID and sd-webui-controlnet: `prepare(det_size=(640, 640))`
# onnxruntime's CUDA provider on a GPU (CPU for what it cannot run), the CPU provider otherwise.
PROVIDERS = {"cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu": ["CPUExecutionProvider"]}


@dataclass(frozen=True)
class DetectedFace:
    """One face: box (x1, y1, x2, y2) and keypoints (5, 2) in the analysed image's pixels, SCRFD's score, and
    the raw ArcFace embedding (512,), not normalised (InstantID's Resampler was trained on the raw vector;
    FaceID's on `normed_embedding`)."""

    bbox: np.ndarray
    keypoints: np.ndarray
    score: float
    embedding: np.ndarray

    @property
    def normed_embedding(self) -> np.ndarray:
        """insightface `Face.normed_embedding`: the embedding over its L2 norm."""
        return self.embedding / np.linalg.norm(self.embedding)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = (float(v) for v in self.bbox[:4])
        return (x2 - x1) * (y2 - y1)


def find_antelopev2(models_root: Path) -> Path:
    """The folder holding the antelopev2 ONNX files under `models_root` (flat or nested one level)."""
    return find_face_pack(models_root, PACK_NAME)


def pack_candidates(name: str) -> tuple[Path, Path]:
    """Where pack `name` may sit, relative to the models folder: `insightface/models/<name>`, or one level deeper
    (insightface's own zips hold a top-level folder of the pack's name; insightface issues #1525, #2702)."""
    return PACKS_FOLDER / name, PACKS_FOLDER / name / name


def pack_folder(models_root: Path, name: str) -> Path | None:
    """The first of `pack_candidates(name)` under `models_root` that holds ONNX files, else None."""
    for relative in pack_candidates(name):
        folder = Path(models_root) / relative
        if folder.is_dir() and any(folder.glob("*.onnx")):
            return folder
    return None


def find_face_pack(models_root: Path, name: str) -> Path:
    """The folder holding pack `name`'s ONNX files under `models_root/insightface/models`. insightface's own
    zips hold a top-level folder of the pack's name, so unpacking one where insightface expects the files
    leaves them one level too deep (insightface issues #1525, #2702): both are accepted.

    Raises:
        NotFoundError: neither folder holds ONNX files.
    """
    folder = pack_folder(models_root, name)
    if folder is not None:
        return folder
    candidates = pack_candidates(name)
    searched = ", ".join(str(Path(models_root) / relative) for relative in candidates)
    raise NotFoundError("insightface", f"no {name} face models ({PACK_FILES[name]}) in {searched}; "
                                       f"{PACK_SOURCE[name]}")


class FaceAnalyser:
    """insightface `FaceAnalysis` over one pack folder, prepared once; `largest_face` picks the face to use."""

    def __init__(self, pack: Path, device_type: str = "cpu"):
        from insightface.app import FaceAnalysis  # deferred: insightface imports onnx, scikit-image, cv2

        providers = PROVIDERS["cuda" if device_type == "cuda" else "cpu"]
        self.pack = Path(pack)
        self._app = FaceAnalysis(name=str(self.pack), providers=providers, allowed_modules=list(NEEDED_TASKS))
        missing = [task for task in NEEDED_TASKS if task not in self._app.models]
        if missing:
            raise NotFoundError("insightface", f"{self.pack} has no {' or '.join(missing)} model "
                                               "(a face detector and a recogniser are needed)")
        # ctx_id < 0 makes insightface drop to the CPU provider.
        self._app.prepare(ctx_id=0 if device_type == "cuda" else -1, det_size=DETECTION_SIZE)
        logger.info("face analysis: %s with %s", self.pack, providers[0])

    def faces(self, rgb: np.ndarray) -> list[DetectedFace]:
        """Every face on an RGB uint8 image (insightface wants BGR: converted here)."""
        height, width = rgb.shape[:2]
        # The detector scales the long side to its input size; a short side that rounds to 0 pixels makes
        # OpenCV's resize assert. Such a sliver holds no face.
        if min(height, width) * max(DETECTION_SIZE) < max(height, width):
            return []
        found = self._app.get(np.ascontiguousarray(rgb[:, :, ::-1]))
        return [DetectedFace(np.asarray(face.bbox, dtype=np.float32), np.asarray(face.kps, dtype=np.float32),
                             float(face.det_score), np.asarray(face.embedding, dtype=np.float32))
                for face in found]

    def largest_face(self, rgb: np.ndarray, field: str) -> DetectedFace:
        """The face with the largest box area, as InstantID and sd-webui-controlnet choose (Forge's embedding
        path takes the highest score instead).

        Raises:
            RequestError: no face on the image, naming `field`.
        """
        faces = self.faces(rgb)
        if not faces:
            raise RequestError(field, "no face found in the image (InstantID and FaceID need a clearly visible face)")
        if len(faces) > 1:
            logger.info("%d faces found; using the largest", len(faces))
        return max(faces, key=lambda face: face.area)
