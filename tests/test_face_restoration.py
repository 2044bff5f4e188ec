"""Face restoration on the demo models: once per detected face per image, where A1111 runs it (after decode,
before ADetailer; after each ADetailer inpaint), pixels outside the pasted faces kept, A1111's infotext."""

import json

import cv2
import numpy as np
import pytest

from engine.errors import NotFoundError
from engine.restore.helper import FACE_SIZE


SMALL = {"prompt": "a portrait", "negative_prompt": "blurry", "steps": 6, "width": 64, "height": 64,
         "sampler_name": "Euler"}
# On the tiny SD1.5 these seeds decode to images in which the demo detector finds 2 and 3 bright "faces";
# seed 23 gives none.
FACE_SEED, NO_FACE_SEED = 21, 23
GFPGAN = {"face_restoration_model": "GFPGAN"}


def restore_payload(**changes):
    return {**SMALL, "seed": FACE_SEED, "restore_faces": True, "override_settings": GFPGAN, **changes}


def count_forwards(module, calls: list, label="restore"):
    """A forward hook on the restorer network: one entry per call (A1111 calls it once per face)."""
    return module.register_forward_hook(lambda *_: calls.append(label))


@pytest.fixture(scope="module")
def batch(sd15_engine):
    """A batch of two generated without and with restoration, the restorer's calls counted, and the restorer
    run by hand on each plain image (the decoded image A1111 hands to the restorer)."""
    restorer = sd15_engine.restorers.get("GFPGAN")
    plain = sd15_engine.txt2img({**SMALL, "seed": FACE_SEED, "batch_size": 2})
    calls = []
    hook = count_forwards(restorer.net.model, calls)
    try:
        restored = sd15_engine.txt2img(restore_payload(batch_size=2))
    finally:
        hook.remove()
    by_hand = [restorer.restore_faces(image, seed=FACE_SEED + i) for i, image in enumerate(plain.images)]
    return plain, restored, calls, by_hand


def test_the_restorer_runs_once_per_detected_face_per_image(batch):
    plain, restored, calls, by_hand = batch
    faces = [len(result.faces) for result in by_hand]
    assert all(count >= 1 for count in faces), f"the demo detector should find faces, found {faces}"
    assert len(calls) == sum(faces) == restored.restorer_calls


def test_restoration_works_on_each_decoded_image(batch):
    plain, restored, _, by_hand = batch
    for image, expected in zip(restored.images, by_hand, strict=True):
        assert image.tobytes() == expected.image.tobytes()
    assert all(a.tobytes() != b.tobytes() for a, b in zip(plain.images, restored.images, strict=True))


def test_pixels_outside_the_pasted_faces_are_unchanged(batch):
    plain, restored, _, by_hand = batch
    for before, after, result in zip(plain.images, restored.images, by_hand, strict=True):
        width, height = before.size
        pasted = np.zeros((height, width), np.float32)
        for face in result.faces:
            crop = np.ones((FACE_SIZE, FACE_SIZE), np.float32)
            pasted += cv2.warpAffine(crop, face.inverse_affine, (width, height))
        outside = pasted == 0
        assert outside.any()
        before, after = np.asarray(before), np.asarray(after)
        assert np.array_equal(before[outside], after[outside])
        assert not np.array_equal(before[~outside], after[~outside])


def test_infotext_and_info_name_the_restorer_as_a1111_writes_them(batch):
    _, restored, _, _ = batch
    info = json.loads(restored.info)
    assert ", Seed: 21, Face restoration: GFPGAN, Size: 64x64," in info["infotexts"][0]
    assert info["restore_faces"] is True
    assert info["face_restoration_model"] == "GFPGAN"


def test_restoration_runs_before_adetailer_and_after_each_adetailer_inpaint(sd15_engine):
    unit = {"ad_model": "face_yolov8n.pt", "ad_confidence": 0.001, "ad_mask_k": 1, "ad_denoising_strength": 0.5,
            "ad_inpaint_only_masked_padding": 8, "ad_restore_face": True}
    payload = restore_payload(alwayson_scripts={"ADetailer": {"args": [True, False, unit]}})
    restorer = sd15_engine.restorers.get("GFPGAN")
    events = []
    # Each restoration starts with one detector run on the whole image, then one restorer call per face.
    hooks = [count_forwards(restorer.face_models.detector, events, "detect"),
             count_forwards(restorer.net.model, events, "restore")]
    try:
        result = sd15_engine.txt2img(payload, on_progress=lambda progress: events.append(progress.stage))
    finally:
        for hook in hooks:
            hook.remove()
    inpaint_steps, main_faces = int(0.5 * 6) + 1, 2
    expected = ["base"] * 6 + ["detect"] + ["restore"] * main_faces + ["adetailer"] * inpaint_steps + ["detect"]
    assert events[: len(expected)] == expected
    crop_faces = events[len(expected) :]
    assert set(crop_faces) <= {"restore"}
    assert result.restorer_calls == main_faces + len(crop_faces)
    assert "ADetailer restore face: True" in json.loads(result.info)["infotexts"][0]


def test_an_image_without_faces_is_left_unchanged_with_a_note(sd15_engine):
    plain = sd15_engine.txt2img({**SMALL, "seed": NO_FACE_SEED})
    result = sd15_engine.txt2img(restore_payload(seed=NO_FACE_SEED))
    assert result.images[0].tobytes() == plain.images[0].tobytes()
    assert result.restorer_calls == 0
    assert any("no face found in image 1" in warning for warning in result.warnings)
    # A1111 names the restorer whenever restore_faces is on.
    assert "Face restoration: GFPGAN" in json.loads(result.info)["infotexts"][0]


def test_an_unknown_restorer_is_an_error_listing_the_installed_ones(sd15_engine):
    payload = restore_payload(override_settings={"face_restoration_model": "CodeFormerX"})
    with pytest.raises(NotFoundError, match=r"face_restoration_model: .*'CodeFormerX'.*'CodeFormer', 'GFPGAN'"):
        sd15_engine.txt2img(payload)


def test_restore_faces_false_does_not_load_or_run_a_restorer(sd15_engine):
    result = sd15_engine.txt2img({**SMALL, "seed": FACE_SEED, "restore_faces": False})
    info = json.loads(result.info)
    assert result.restorer_calls == 0
    assert info["restore_faces"] is False and info["face_restoration_model"] is None
    assert "Face restoration" not in info["infotexts"][0]


def test_code_former_weight_reaches_codeformer_and_is_the_default_model(sd15_engine):
    restorer = sd15_engine.restorers.get("CodeFormer")
    weights = []
    hook = restorer.net.model.register_forward_pre_hook(
        lambda module, args, kwargs: weights.append(kwargs["weight"]), with_kwargs=True
    )
    payload = {**SMALL, "seed": FACE_SEED + 4, "restore_faces": True,  # seed 25: one face
               "override_settings": {"code_former_weight": 0.25}}
    try:
        result = sd15_engine.txt2img(payload)
    finally:
        hook.remove()
    assert weights == [0.25] * result.restorer_calls
    assert result.restorer_calls == 1
    assert "Face restoration: CodeFormer" in json.loads(result.info)["infotexts"][0]
