"""dw_openpose_full and animal_openpose through the worker (`/controlnet/detect`, maps and "poses" JSON), on the
tiny YOLOX / RTMPose ONNX files the demo models hold.

References: rtmlib's own YOLOX and RTMPose classes (DWPose's ONNX pre- and post-processing as that library
keeps it) for the boxes and keypoints, controlnet_aux's OpenPose drawing functions for the drawing, and
sd-webui-controlnet's documented rules (the neck, the OpenPose order, the 0.3 visibility cut, the whole-image
fallback) checked directly.
"""

import base64
import io
import types

import numpy as np
import pytest
from PIL import Image

from engine.control.api import detect
from engine.control.maps import dwpose, poses
from engine.control.maps.annotators import (
    ANIMAL_POSE,
    DOWNLOAD_FOLDER,
    DWPOSE_DETECTOR,
    DWPOSE_WHOLEBODY,
    AnnotatorStore,
    quiet_import,
)


SIZE = 64


def _scene(person=True, cat=False) -> np.ndarray:
    """A dark image with a red blob (a person to the tiny detector) and a blue one (a cat)."""
    pixels = np.full((SIZE, SIZE, 3), 10, np.uint8)
    if person:
        pixels[20:27, 26:32, 0] = np.linspace(200, 255, 6).astype(np.uint8)[None]
    if cat:
        pixels[40:46, 8:14, 2] = 255
    return pixels


def _b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _detect(root, module: str, image: np.ndarray) -> tuple[np.ndarray, dict]:
    body = detect(types.SimpleNamespace(root=root), {"controlnet_module": module, "controlnet_processor_res": SIZE,
                                                     "controlnet_input_images": [_b64(image)]})
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).convert("RGB"))
    return drawn, body["poses"][0]


@pytest.fixture(scope="module")
def folder(demo_models):
    return demo_models / DOWNLOAD_FOLDER / "openpose"


def _rtmlib_keypoints(folder, image, pose_file, input_size, wanted):
    from rtmlib import YOLOX, RTMPose

    detector = YOLOX(str(folder / DWPOSE_DETECTOR), det_mode="multiclass", nms_thr=0.45, score_thr=0.3,
                     backend="onnxruntime", device="cpu")
    boxes, classes = detector(image)
    model = RTMPose(str(folder / pose_file), model_input_size=input_size, backend="onnxruntime", device="cpu")
    return model(image, bboxes=list(boxes[np.isin(classes, wanted)]))


def test_dwpose_keypoints_match_rtmlib(folder):
    image = _scene(cat=True)
    keypoints, scores = AnnotatorStore(folder.parent.parent).get("dwpose")(image)
    expected_keypoints, expected_scores = _rtmlib_keypoints(folder, image, DWPOSE_WHOLEBODY, (288, 384), [0])
    assert keypoints.shape == (1, 133, 2)  # one person (the cat is not one)
    np.testing.assert_allclose(keypoints, expected_keypoints, atol=1e-4)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)


def test_animal_keypoints_match_rtmlib(folder):
    image = _scene(person=True, cat=True)
    keypoints, scores = AnnotatorStore(folder.parent.parent).get("animal_pose")(image)
    expected_keypoints, expected_scores = _rtmlib_keypoints(folder, image, ANIMAL_POSE, (256, 256),
                                                            list(dwpose.ANIMAL_CLASSES))
    assert keypoints.shape == (1, 17, 2)
    np.testing.assert_allclose(keypoints, expected_keypoints, atol=1e-4)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)


def test_dw_openpose_full_map_and_poses_follow_sd_webui_controlnet(demo_models, folder):
    image = _scene()
    drawn, pose_json = _detect(demo_models, "dw_openpose_full", image)
    keypoints, scores = _rtmlib_keypoints(folder, image, DWPOSE_WHOLEBODY, (288, 384), [0])

    assert (pose_json["canvas_height"], pose_json["canvas_width"]) == (SIZE, SIZE) and pose_json["animals"] == []
    person = pose_json["people"][0]
    body = np.asarray(person["pose_keypoints_2d"]).reshape(18, 3)
    # OpenPose order: 0 nose, 1 neck (between the shoulders, COCO 5 and 6), 2 right shoulder (COCO 6),
    # 5 left shoulder (COCO 5), 8 right hip (COCO 12), 11 left hip (COCO 11), 14 right eye (COCO 2).
    np.testing.assert_allclose(body[1, :2], keypoints[0, [5, 6]].mean(axis=0), atol=1e-4)
    for openpose, coco in ((0, 0), (2, 6), (5, 5), (8, 12), (11, 11), (14, 2)):
        np.testing.assert_allclose(body[openpose, :2], keypoints[0, coco], atol=1e-4)
    # Points scoring below 0.3 are missing (0, 0, 0); DWPose's 68 face points gain the two eyes.
    hidden = scores[0, :17] < 0.3
    assert hidden.any() and not hidden.all()
    assert len(person["face_keypoints_2d"]) == 70 * 3
    assert len(person["hand_left_keypoints_2d"]) == len(person["hand_right_keypoints_2d"]) == 21 * 3
    left_hand = np.asarray(person["hand_left_keypoints_2d"]).reshape(21, 3)
    visible = scores[0, 91:112] >= 0.3
    np.testing.assert_allclose(left_hand[visible, :2], keypoints[0, 91:112][visible], atol=1e-4)
    assert (left_hand[~visible] == 0).all()
    # The map is that JSON drawn: pixels in, as sd-webui-controlnet's drawing takes them.
    people = poses.wholebody_people(AnnotatorStore(demo_models).get("dwpose")(image))
    np.testing.assert_array_equal(drawn, poses.draw_people(people, SIZE, SIZE))
    assert drawn.any()


def test_no_detection_draws_nothing_and_no_person_falls_back_to_the_whole_image(demo_models):
    drawn, pose_json = _detect(demo_models, "dw_openpose_full", np.full((SIZE, SIZE, 3), 10, np.uint8))
    assert not drawn.any() and pose_json["people"] == []
    # A cat only: sd-webui-controlnet's pose model then reads the whole image as one person.
    _, pose_json = _detect(demo_models, "dw_openpose_full", _scene(person=False, cat=True))
    assert len(pose_json["people"]) == 1


def test_animal_openpose_draws_the_animals_limbs(demo_models):
    drawn, pose_json = _detect(demo_models, "animal_openpose", _scene(person=False, cat=True))
    assert pose_json["people"] == [] and len(pose_json["animals"]) == 1
    points = np.asarray(pose_json["animals"][0]).reshape(17, 3)[:, :2]
    # The last limb drawn, (13, 14) knee to paw, is grey (150, 150, 150): its middle pixel.
    middle = ((points[12] + points[13]) / 2).astype(int)
    assert tuple(drawn[middle[1], middle[0]]) == (150, 150, 150)


def test_modules_that_are_not_openpose_answer_no_poses(tmp_path):
    body = detect(types.SimpleNamespace(root=tmp_path), {"controlnet_module": "canny",
                                                         "controlnet_input_images": [_b64(_scene())]})
    assert "poses" not in body


def _full_person(height, width) -> poses.Person:
    generator = np.random.default_rng(1)

    def part(count):
        return [poses.Keypoint(float(x), float(y)) for x, y in generator.uniform(0.1, 0.9, (count, 2))]

    return poses.Person(part(18), part(21), part(21), part(70))


def test_drawing_matches_controlnet_aux_openpose_drawing():
    """With every point present, in fractions of the canvas, sd-webui-controlnet's drawing is controlnet_aux's."""
    util = quiet_import("controlnet_aux.open_pose.util")
    person = _full_person(SIZE, SIZE)
    expected = np.zeros((SIZE, SIZE, 3), np.uint8)
    util.draw_bodypose(expected, person.body)
    for hand in (person.left_hand, person.right_hand):
        util.draw_handpose(expected, hand)
    util.draw_facepose(expected, person.face)
    np.testing.assert_array_equal(poses.draw_people([person], SIZE, SIZE), expected)
    # The same points in pixels (a part not all within [0, 1]) draw the same picture.
    in_pixels = poses.Person(*[[point._replace(x=point.x * SIZE, y=point.y * SIZE) for point in part]
                               for part in person])
    np.testing.assert_array_equal(poses.draw_people([in_pixels], SIZE, SIZE), expected)
