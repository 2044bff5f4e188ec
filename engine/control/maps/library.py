"""The preprocessors with weights, as sd-webui-controlnet v1.1.455 runs them
(`scripts/preprocessor/legacy/processor.py`, `scripts/preprocessor/lama_inpaint.py`), with controlnet_aux's
detectors (and spandrel's LaMa) doing the network work.

sd-webui-controlnet resizes the input so its short side is `processor_res`, edge-pads it to a multiple of 64,
runs the annotator and cuts the pad off. controlnet_aux's detectors resize to a multiple of 64 themselves; given
the padded image with `detect_resolution` = its short side, that resize keeps the size (a no-op), so the network
sees exactly what sd-webui-controlnet's copy of the same annotator sees.
"""

from collections.abc import Callable

import cv2
import numpy as np

from engine.control.maps.poses import (
    Person,
    animal_poses,
    draw_animals,
    draw_people,
    poses_json,
    wholebody_people,
)
from engine.control.preprocess import resize_with_pad


Detector = Callable[[str], object]  # annotator name → loaded detector
PoseSink = Callable[[dict], None] | None  # receives the OpenPose JSON of the poses found (sd's json_pose_callback)


def _padded_call(image: np.ndarray, resolution, detector, **options) -> np.ndarray:
    """Run a controlnet_aux detector on the padded image at its own size; return the map without the pad."""
    padded, remove_pad = resize_with_pad(image, int(resolution))
    size = min(padded.shape[:2])
    detected = detector(padded, detect_resolution=size, image_resolution=size, output_type="np", **options)
    return remove_pad(np.asarray(detected))


def _scribble(edges: np.ndarray) -> np.ndarray:
    """`scribble_hed` / `scribble_pidinet`: thin the soft edges (NMS), blur and binarise."""
    from engine.control.maps.annotators import quiet_import

    result = quiet_import("controlnet_aux.util").nms(edges, 127, 3.0)
    result = cv2.GaussianBlur(result, (0, 0), 3.0)
    result[result > 4] = 255
    result[result < 255] = 0
    return result


def hed(image, resolution, a, b, detectors: Detector, safe: bool = False):
    return _padded_call(image, resolution, detectors("hed"), safe=safe)


def scribble_hed(image, resolution, a, b, detectors: Detector):
    return _scribble(hed(image, resolution, a, b, detectors))


def pidinet(image, resolution, a, b, detectors: Detector, safe: bool = False, apply_filter: bool = False):
    return _padded_call(image, resolution, detectors("pidinet"), safe=safe, apply_filter=apply_filter)


def scribble_pidinet(image, resolution, a, b, detectors: Detector):
    return _scribble(pidinet(image, resolution, a, b, detectors))


def mlsd(image, resolution, value_threshold, distance_threshold, detectors: Detector):
    return _padded_call(image, resolution, detectors("mlsd"), thr_v=value_threshold, thr_d=distance_threshold)


def lineart(image, resolution, a, b, detectors: Detector, coarse: bool = False):
    """lineart_realistic / lineart_coarse: controlnet_aux inverts to dark-on-light; sd-webui-controlnet inverts
    the network's output the same way ("applied auto inversion")."""
    return _padded_call(image, resolution, detectors("lineart"), coarse=coarse)


def lineart_anime(image, resolution, a, b, detectors: Detector):
    return _padded_call(image, resolution, detectors("lineart_anime"))


def openpose(image, resolution, detectors: Detector, on_pose: PoseSink, body=True, hand=False, face=False):
    """OpenPose (CMU body, hand and face networks): controlnet_aux finds and draws the poses; their JSON, in
    fractions of the padded image, goes to `on_pose`."""
    padded, remove_pad = resize_with_pad(image, int(resolution))
    height, width = padded.shape[:2]
    found = detectors("openpose").detect_poses(padded, include_hand=hand, include_face=face)
    if on_pose is not None:
        people = [Person(pose.body.keypoints, pose.left_hand, pose.right_hand, pose.face) for pose in found]
        on_pose(poses_json(people, [], height, width))
    from engine.control.maps.annotators import quiet_import

    draw_poses = quiet_import("controlnet_aux.open_pose").draw_poses
    return remove_pad(draw_poses(found, height, width, draw_body=body, draw_hand=hand, draw_face=face))


def dw_openpose(image, resolution, detectors: Detector, on_pose: PoseSink):
    """dw_openpose_full: DWPose's whole-body keypoints drawn as OpenPose's (body, hands, face); their JSON, in
    pixels of the padded image, goes to `on_pose`."""
    padded, remove_pad = resize_with_pad(image, int(resolution))
    height, width = padded.shape[:2]
    people = wholebody_people(detectors("dwpose")(padded))
    if on_pose is not None:
        on_pose(poses_json(people, [], height, width))
    return remove_pad(draw_people(people, height, width))


def animal_openpose(image, resolution, detectors: Detector, on_pose: PoseSink):
    """animal_openpose: AP-10K keypoints of the detected animals, drawn as limbs; JSON under "animals"."""
    padded, remove_pad = resize_with_pad(image, int(resolution))
    height, width = padded.shape[:2]
    animals = animal_poses(detectors("animal_pose")(padded))
    if on_pose is not None:
        on_pose(poses_json([], animals, height, width))
    return remove_pad(draw_animals(animals, height, width))


def midas_depth(image, resolution, a, b, detectors: Detector):
    return _padded_call(image, resolution, detectors("midas"))


def midas_normal(image, resolution, background_threshold, b, detectors: Detector):
    """normal_midas: sd-webui-controlnet's `midas_normal` (a = 2π, the slider is the background threshold)."""
    padded, remove_pad = resize_with_pad(image, int(resolution))
    size = min(padded.shape[:2])
    _, normal = detectors("midas")(padded, a=np.pi * 2.0, bg_th=background_threshold, depth_and_normal=True,
                                   detect_resolution=size, image_resolution=size, output_type="np")
    return remove_pad(np.asarray(normal))


def zoe(image, resolution, a, b, detectors: Detector):
    return _padded_call(image, resolution, detectors("zoedepth"))


def leres(image, resolution, near, background, detectors: Detector, boost: bool = False):
    return _padded_call(image, resolution, detectors("leres"), thr_a=near, thr_b=background, boost=boost)


def depth_anything(image, resolution, a, b, detectors: Detector, annotator: str = "depth_anything"):
    """depth_anything / depth_anything_v2 (`colored=False`): grey relative depth on the padded image, pad cut off."""
    padded, remove_pad = resize_with_pad(image, int(resolution))
    depth = detectors(annotator)(padded)
    return remove_pad(np.repeat(depth[:, :, None], 3, axis=2))


def anime_face_segment(image, resolution, a, b, detectors: Detector):
    """seg_anime_face: the segmenter works at short side 512 and its map is cut to the padded image's unpadded
    size, as sd-webui-controlnet cuts it (so only at resolution 512 do the two scales agree)."""
    padded, remove_pad = resize_with_pad(image, int(resolution))
    return remove_pad(detectors("anime_face_segment")(padded))


def mobile_sam(image, resolution, detectors: Detector, seed: int):
    """mobile_sam: SAM's automatic masks of the padded image, each a random colour (`engine.control.maps.mobile_sam`;
    the colours come from a private RNG seeded with the unit's seed), pad cut off."""
    padded, remove_pad = resize_with_pad(image, int(resolution))
    return remove_pad(detectors("mobile_sam")(padded, min(padded.shape[:2]), seed))


def normal_bae(image, resolution, a, b, detectors: Detector):
    return _padded_call(image, resolution, detectors("normal_bae"))


def oneformer(image, resolution, a, b, detectors: Detector, annotator: str):
    """seg_ofade20k / seg_ofcoco: OneFormer's coloured semantic map of the padded image, pad cut off."""
    padded, remove_pad = resize_with_pad(image, int(resolution))
    return remove_pad(detectors(annotator)(padded))


LAMA_RESOLUTION = 256  # "Always use 256 since lama is trained on 256"


def inpaint_lama(image: np.ndarray, resolution, a, b, detectors: Detector) -> np.ndarray:
    """inpaint_only+lama: LaMa fills the masked area at 256 px, the fill is resized back and blended under the
    mask; the result keeps the mask as alpha (`PreprocessorLamaInpaint`, `annotator/lama`)."""
    import torch

    height, width = image.shape[:2]
    colour, mask = image[:, :, :3].copy(), image[:, :, 3:4].copy()
    padded, remove_pad = resize_with_pad(image, LAMA_RESOLUTION)
    model = detectors("lama")
    parameter = next(model.parameters())
    with torch.no_grad():
        pixels = torch.from_numpy(padded.astype(np.float32) / 255.0).to(parameter.device)
        hard = (pixels[:, :, 3:4] > 0.5).float()
        rgb = pixels[:, :, :3] * (1 - hard)
        # spandrel's LaMa blanks the masked pixels, fills them and keeps the others, as `annotator/lama` does.
        filled = model(rgb.permute(2, 0, 1)[None], hard.permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    predicted = (filled * 255.0).clamp(0, 255).cpu().numpy().astype(np.uint8)
    predicted = cv2.resize(remove_pad(predicted), (width, height))
    alpha = mask.astype(np.float32) / 255.0
    blended = predicted.astype(np.float32) * alpha + colour.astype(np.float32) * (1 - alpha)
    return np.concatenate([blended.clip(0, 255).astype(np.uint8), mask], axis=2)
