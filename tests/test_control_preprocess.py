"""Control maps (resize with pad, canny, resize modes, pixel perfect), InstantID's keypoint map, and the face
analyser running insightface's real code on the tiny ONNX pack. No torch."""

import base64
import io
import types

import numpy as np
import pytest
from PIL import Image

from engine.control.api import detect
from engine.control.faces import FaceAnalyser, find_antelopev2
from engine.control.keypoints import draw_keypoints
from engine.control.maps.simple import canny as _canny
from engine.control.preprocess import fit_map, pixel_perfect_resolution, resize_with_pad
from engine.control.tiny_faces import ANTELOPE_FOLDER, KEYPOINT_FRACTIONS, write_tiny_antelopev2
from engine.control.units import CROP_AND_RESIZE, JUST_RESIZE, RESIZE_AND_FILL
from engine.errors import NotFoundError, RequestError


A, B, C = (10, 10, 10), (100, 100, 100), (200, 200, 200)
# 2 rows × 4 columns of three flat colours: resized nearest-neighbour, so every expected pixel is exact.
STRIPES = np.array([[A, A, B, C], [A, A, B, C]], dtype=np.uint8)


def test_resize_with_pad_scales_the_short_side_and_pads_to_64():
    image = np.zeros((50, 90, 3), np.uint8)
    image[:, -1] = 255
    padded, remove_pad = resize_with_pad(image, 64)
    # 64 / 50 = 1.28: 90 → round(115.2) = 115 columns, padded with copies of the edge to 128.
    assert padded.shape == (64, 128, 3)
    assert np.array_equal(padded[:, 115:], np.repeat(padded[:, 114:115], 13, axis=1))
    assert remove_pad(padded).shape == (64, 115, 3)


@pytest.mark.parametrize(
    ("mode", "size", "expected_row"),
    [
        (JUST_RESIZE, (2, 3), [A, B]),  # stretched: nearest picks columns 0 and 2
        (CROP_AND_RESIZE, (4, 4), [A, A, B, B]),  # ×2 to 8 × 4, the middle 4 columns kept
    ],
)
def test_fit_map_geometry(mode, size, expected_row):
    fitted = fit_map(STRIPES, mode, *size)
    assert fitted.shape == (size[1], size[0], 3)
    assert all(np.array_equal(row, np.array(expected_row, np.uint8)) for row in fitted)


def test_resize_and_fill_centres_on_the_border_median():
    fitted = fit_map(STRIPES, RESIZE_AND_FILL, 4, 4)
    # Scale min(4/2, 4/4) = 1: the map sits in rows 1-2; border pixels are A×6, B×2, C×4 → median 55.
    assert np.array_equal(fitted[1:3], STRIPES)
    assert (fitted[0] == 55).all() and (fitted[3] == 55).all()


def test_binary_maps_stay_black_and_white_when_enlarged():
    edges = np.zeros((16, 16, 3), np.uint8)
    edges[4:12, 8] = 255
    fitted = fit_map(edges, JUST_RESIZE, 40, 40)
    assert set(np.unique(fitted)) == {0, 255}
    assert fitted[20, 20:22].max() == 255 and fitted[20, :10].max() == 0


def test_pixel_perfect_resolution():
    # A 1000 × 500 image for a 960 × 1280 pass: covering needs ×2.56 of the short side, fitting ×0.96.
    assert pixel_perfect_resolution((1000, 500), (960, 1280), CROP_AND_RESIZE) == 1280
    assert pixel_perfect_resolution((1000, 500), (960, 1280), JUST_RESIZE) == 1280
    assert pixel_perfect_resolution((1000, 500), (960, 1280), RESIZE_AND_FILL) == 480


def test_canny_finds_the_square_and_honours_its_thresholds():
    image = np.full((64, 64, 3), 30, np.uint8)
    image[20:44, 20:44] = 40  # a faint square: gradient far below 100/200, well above 1/2
    assert _canny(image, 64, 100, 200).max() == 0
    edges = _canny(image, 64, 1, 2)
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) == {0, 255}
    assert edges[32, 18:23].max() == 255 and edges[32, 30:34].max() == 0 and edges[2:10, 2:10].max() == 0


def test_keypoint_map_matches_a_hand_drawn_example():
    keypoints = [(20, 20), (60, 20), (40, 40), (25, 60), (55, 60)]
    drawn = draw_keypoints(80, 80, keypoints)
    assert drawn.shape == (80, 80, 3) and drawn.dtype == np.uint8
    # Dots (radius 10) in full colour: red, green, blue, yellow, magenta.
    assert tuple(drawn[20, 20]) == (255, 0, 0) and tuple(drawn[20, 29]) == (255, 0, 0)
    assert tuple(drawn[20, 60]) == (0, 255, 0) and tuple(drawn[40, 40]) == (0, 0, 255)
    assert tuple(drawn[60, 25]) == (255, 255, 0) and tuple(drawn[60, 55]) == (255, 0, 255)
    # Limbs to the nose at 60 % (153): (30, 30) lies on the red limb, 14 px from both of its dots.
    assert tuple(drawn[30, 30]) == (153, 0, 0)
    assert tuple(drawn[50, 32]) == (153, 153, 0)  # yellow limb from the left mouth corner
    # The limb is 4 px to each side of its axis (the diagonal y = x here): 2.8 px in, 5.7 px out.
    assert tuple(drawn[28, 32]) == (153, 0, 0) and tuple(drawn[26, 34]) == (0, 0, 0)
    assert tuple(drawn[8, 20]) == (0, 0, 0) and tuple(drawn[75, 5]) == (0, 0, 0)  # background


@pytest.fixture(scope="module")
def face_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    write_tiny_antelopev2(root)
    return root


@pytest.fixture(scope="module")
def analyser(face_models):
    return FaceAnalyser(find_antelopev2(face_models))


def _two_faces() -> np.ndarray:
    """A white cell (small box, high score) and a cell with blue 128 (twice the box, lower score)."""
    image = np.zeros((640, 640, 3), np.uint8)
    image[64:96, 96:128] = (255, 255, 255)
    image[320:352, 384:416] = (255, 255, 128)
    return image


def test_largest_face_is_chosen_not_the_most_confident(analyser):
    faces = analyser.faces(_two_faces())
    assert len(faces) == 2
    confident = max(faces, key=lambda face: face.score)
    largest = analyser.largest_face(_two_faces(), "image")
    assert largest is not confident and largest.area > confident.area
    # The tiny detector's box starts at the cell corner and is (2 − b) · 32 pixels, b ≈ 0.0039 for blue 128.
    size = (2 - (128 - 127.5) / 128) * 32
    np.testing.assert_allclose(largest.bbox, [384, 320, 384 + size, 320 + size], atol=0.01)
    expected = [(384 + fx * size, 320 + fy * size) for fx, fy in KEYPOINT_FRACTIONS]
    np.testing.assert_allclose(largest.keypoints, expected, atol=0.01)
    np.testing.assert_allclose(confident.bbox[:2], [96, 64], atol=0.01)


def test_embedding_is_insightfaces_raw_vector(analyser, face_models):
    from insightface.app import FaceAnalysis

    largest = analyser.largest_face(_two_faces(), "image")
    reference = FaceAnalysis(name=str(find_antelopev2(face_models)), providers=["CPUExecutionProvider"],
                             allowed_modules=["detection", "recognition"])
    reference.prepare(ctx_id=-1, det_size=(640, 640))
    # insightface wants BGR; the analyser converts our RGB.
    theirs = max(reference.get(_two_faces()[:, :, ::-1].copy()), key=lambda f: (f.bbox[2] - f.bbox[0]))
    assert largest.embedding.shape == (512,)
    np.testing.assert_array_equal(largest.embedding, theirs.embedding)
    assert abs(float(np.linalg.norm(largest.embedding)) - 1.0) > 0.5  # not the normed embedding


def test_no_face_is_a_clear_error(analyser):
    with pytest.raises(RequestError, match=r"^photo: no face found"):
        analyser.largest_face(np.zeros((640, 640, 3), np.uint8), "photo")


def test_pack_folder_nested_by_the_official_zip_is_found(tmp_path):
    write_tiny_antelopev2(tmp_path, folder=ANTELOPE_FOLDER / "antelopev2")
    assert find_antelopev2(tmp_path) == tmp_path / ANTELOPE_FOLDER / "antelopev2"
    with pytest.raises(NotFoundError, match="download_models.py"):
        find_antelopev2(tmp_path / "elsewhere")


def _b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _decoded(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


def test_detect_endpoint_draws_maps(face_models):
    square = np.zeros((64, 64, 3), np.uint8)
    square[16:48, 16:48] = 255
    body = detect(None, {"controlnet_module": "canny", "controlnet_input_images": [_b64(square)],
                         "controlnet_processor_res": 128})
    assert body["info"] == "Success" and len(body["images"]) == 1
    np.testing.assert_array_equal(_decoded(body["images"][0]), _canny(square, 128, 100, 200))
    # 32 is below the resolution slider's minimum (64): sd-webui-controlnet falls back to 512.
    body = detect(None, {"controlnet_module": "canny", "controlnet_input_images": [_b64(square)],
                         "controlnet_processor_res": 32})
    assert _decoded(body["images"][0]).shape == (512, 512, 3)

    catalog = types.SimpleNamespace(root=face_models)
    body = detect(catalog, {"controlnet_module": "instant_id_face_keypoints",
                            "controlnet_input_images": [_b64(_two_faces())], "controlnet_processor_res": 640})
    keypoints = _decoded(body["images"][0])
    assert keypoints.shape == (640, 640, 3)
    largest = FaceAnalyser(find_antelopev2(face_models)).largest_face(_two_faces(), "image")
    np.testing.assert_array_equal(keypoints, draw_keypoints(640, 640, largest.keypoints))
    with pytest.raises(RequestError, match="controlnet_input_images"):
        detect(None, {"controlnet_module": "canny", "controlnet_input_images": []})
