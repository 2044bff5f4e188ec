"""Which function draws each map module's map: a table keyed by the module's name in `engine.control.modules`.

A runner takes (image HWC uint8 — RGBA for inpaint modules —, processor resolution, threshold a, threshold b,
`MapTools`) and returns the map at the preprocessor's scale (HWC uint8; RGBA for inpaint modules). Pose modules
also hand their poses' OpenPose JSON to `MapTools.on_pose`.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.control.maps import library, simple
from engine.control.preprocess import FaceFinder, keypoint_map


@dataclass(frozen=True)
class MapTools:
    """What runners may need besides the image: loaded annotators, the face finder, the NumPy seed."""

    detectors: Callable[[str], object]  # annotator name → detector (loaded on first use)
    faces: FaceFinder
    seed: int = 0  # sd-webui-controlnet `set_numpy_seed`: (seed + subseed) & 0xFFFFFFFF (shuffle, mobile_sam)
    field: str = "image"  # for errors (no face found…)
    on_pose: Callable[[dict], None] | None = None  # receives the pose modules' OpenPose JSON (`/controlnet/detect`)


Runner = Callable[[np.ndarray, float, float, float, MapTools], np.ndarray]


def _plain(function) -> Runner:
    return lambda image, resolution, a, b, tools: function(image, resolution, a, b)


def _with_detectors(function, **options) -> Runner:
    return lambda image, resolution, a, b, tools: function(image, resolution, a, b, tools.detectors, **options)


def _with_poses(function, **options) -> Runner:
    return lambda image, resolution, a, b, tools: function(image, resolution, tools.detectors, tools.on_pose,
                                                          **options)


RUNNERS: dict[str, Runner] = {
    "none": _plain(simple.identity),
    "canny": _plain(simple.canny),
    "invert": _plain(simple.invert),
    "blur_gaussian": _plain(simple.blur_gaussian),
    "scribble_xdog": _plain(simple.scribble_xdog),
    "shuffle": lambda image, resolution, a, b, tools: simple.shuffle(image, resolution, a, b, tools.seed),
    "tile_resample": _plain(simple.tile_resample),
    "tile_colorfix": _plain(simple.identity),
    "tile_colorfix+sharp": _plain(simple.identity),
    "recolor_luminance": _plain(simple.recolor_luminance),
    "recolor_intensity": _plain(simple.recolor_intensity),
    "threshold": _plain(simple.threshold),
    "color": _plain(simple.color_grid),
    "lineart_standard": _plain(simple.lineart_standard),
    "inpaint": _plain(simple.inpaint),
    "inpaint_only": _plain(simple.inpaint),
    "inpaint_only+lama": _with_detectors(library.inpaint_lama),
    "depth": _with_detectors(library.midas_depth),
    "normal_map": _with_detectors(library.midas_normal),
    "depth_zoe": _with_detectors(library.zoe),
    "depth_leres": _with_detectors(library.leres),
    "depth_leres++": _with_detectors(library.leres, boost=True),
    "openpose": _with_poses(library.openpose),
    "openpose_face": _with_poses(library.openpose, face=True),
    "openpose_faceonly": _with_poses(library.openpose, body=False, face=True),
    "openpose_full": _with_poses(library.openpose, hand=True, face=True),
    "openpose_hand": _with_poses(library.openpose, hand=True),
    "dw_openpose_full": _with_poses(library.dw_openpose),
    "animal_openpose": _with_poses(library.animal_openpose),
    "lineart": _with_detectors(library.lineart),
    "lineart_coarse": _with_detectors(library.lineart, coarse=True),
    "lineart_anime": _with_detectors(library.lineart_anime),
    "hed": _with_detectors(library.hed),
    "hed_safe": _with_detectors(library.hed, safe=True),
    "scribble_hed": _with_detectors(library.scribble_hed),
    "pidinet": _with_detectors(library.pidinet),
    "pidinet_safe": _with_detectors(library.pidinet, safe=True),
    "pidinet_scribble": _with_detectors(library.scribble_pidinet),
    "pidinet_sketch": _with_detectors(library.pidinet, apply_filter=True),
    "mlsd": _with_detectors(library.mlsd),
    "normal_bae": _with_detectors(library.normal_bae),
    "anime_face_segment": _with_detectors(library.anime_face_segment),
    "mobile_sam": lambda image, resolution, a, b, tools: library.mobile_sam(image, resolution, tools.detectors,
                                                                            tools.seed),
    "oneformer_ade20k": _with_detectors(library.oneformer, annotator="oneformer_ade20k"),
    "oneformer_coco": _with_detectors(library.oneformer, annotator="oneformer_coco"),
    "depth_anything": _with_detectors(library.depth_anything),
    "depth_anything_v2": _with_detectors(library.depth_anything, annotator="depth_anything_v2"),
    "instant_id_face_keypoints": lambda image, resolution, a, b, tools: keypoint_map(
        image, int(resolution), tools.faces, tools.field),
}


def detect_map(module: str, image: np.ndarray, resolution: float, thresholds: tuple[float, float],
               tools: MapTools) -> np.ndarray:
    """The map a map module draws from an image (HWC uint8 RGB, RGBA for inpaint modules)."""
    runner = RUNNERS.get(module)
    if runner is None:
        raise ValueError(f"module {module!r} draws no map")
    return np.ascontiguousarray(runner(image, resolution, *thresholds, tools))
