"""/sdapi/v1/img2img on the tiny models: A1111's step counts, resize modes, inpainting that keeps the rest."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.errors import RequestError
from engine.imaging.inpaint import blur_mask


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def photo(width=96, height=64) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def box_mask(size, box) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


BASE = {"prompt": "a cat", "seed": 9, "steps": 10, "width": 64, "height": 64, "sampler_name": "Euler",
        "denoising_strength": 0.4}


def count_calls(engine, payload):
    calls = []
    result = engine.img2img(payload, on_progress=calls.append)
    return result, len(calls)


def test_img2img_runs_a1111s_step_count(sd15_engine):
    result, calls = count_calls(sd15_engine, {**BASE, "init_images": [b64(photo())]})
    # int(0.4 × 10) + 1 = 5 steps from the matching point of a 10-step schedule.
    assert calls == 5
    assert result.images[0].size == (64, 64)
    info = json.loads(result.info)
    assert "Denoising strength: 0.4" in info["infotexts"][0]
    assert result.response()["parameters"]["init_images"] is None


def test_data_uri_prefix_and_batch_of_init_images(sd15_engine):
    first, second = b64(photo()), b64(photo(64, 96))
    payload = {**BASE, "init_images": [f"data:image/png;base64,{first}", second], "steps": 3, "batch_size": 4}
    result = sd15_engine.img2img(payload)
    assert len(result.images) == 2  # A1111 lowers batch_size to the number of init images
    assert json.loads(result.info)["all_seeds"] == [9, 10]


@pytest.mark.parametrize(("mode", "size"), [(0, (64, 64)), (1, (64, 64)), (2, (64, 64)), (3, (64, 64))])
def test_resize_modes_give_the_processing_size(sd15_engine, mode, size):
    result = sd15_engine.img2img({**BASE, "steps": 2, "init_images": [b64(photo())], "resize_mode": mode})
    assert result.images[0].size == size


@pytest.mark.parametrize("only_masked", [True, False])
def test_inpainting_keeps_pixels_outside_the_blurred_mask(sd15_engine, only_masked):
    image = photo(96, 64)
    mask = box_mask(image.size, (40, 20, 60, 40))
    payload = {**BASE, "init_images": [b64(image)], "mask": b64(mask), "mask_blur": 4, "inpainting_fill": 1,
               "inpaint_full_res": only_masked, "inpaint_full_res_padding": 8, "width": 64, "height": 64}
    result = sd15_engine.img2img(payload)
    output = np.asarray(result.images[0]).astype(int)
    if only_masked:
        assert result.images[0].size == image.size  # only masked pastes back into the original
        outside = np.asarray(blur_mask(mask, 4)) == 0
        assert np.array_equal(output[outside], np.asarray(image).astype(int)[outside])
        assert not np.array_equal(output, np.asarray(image))
    else:
        assert result.images[0].size == (64, 64)


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_every_inpainting_fill_runs(sd15_engine, fill):
    image = photo(64, 64)
    payload = {**BASE, "steps": 3, "init_images": [b64(image)], "mask": b64(box_mask(image.size, (8, 8, 40, 40))),
               "inpainting_fill": fill}
    assert sd15_engine.img2img(payload).images[0].size == (64, 64)


def test_inverted_mask_repaints_the_outside(sd15_engine):
    image = photo(64, 64)
    mask = box_mask(image.size, (16, 16, 47, 47))
    payload = {**BASE, "init_images": [b64(image)], "mask": b64(mask), "inpainting_mask_invert": 1,
               "inpaint_full_res": False, "mask_blur": 0}
    output = np.asarray(sd15_engine.img2img(payload).images[0]).astype(int)
    inside = np.asarray(mask) == 255
    assert np.array_equal(output[inside], np.asarray(image).astype(int)[inside])


@pytest.mark.parametrize(("change", "field"), [
    ({"init_images": []}, "init_images"),
    ({"init_images": ["not base64!"]}, "init_images[0]"),
    ({"resize_mode": 7}, "resize_mode"),
    ({"inpainting_fill": 9}, "inpainting_fill"),
    ({"denoising_strength": 1.5}, "denoising_strength"),
    ({"mask": "AAAA"}, "mask"),
])
def test_bad_img2img_fields_are_errors_naming_them(sd15_engine, change, field):
    with pytest.raises(RequestError) as caught:
        sd15_engine.img2img({**BASE, "init_images": [b64(photo())], **change})
    assert caught.value.field == field


def test_img2img_through_the_envelope(sd15_engine):
    body = sd15_engine.handle("POST", "/sdapi/v1/img2img", {**BASE, "steps": 2, "init_images": [b64(photo())]})
    assert set(body) == {"images", "parameters", "info"}


def test_faces_are_restored_before_the_original_is_pasted_back(sd15_engine):
    """A1111 restores the decoded crop, then overlays the original outside the mask: a restored face box that
    reaches past the mask changes nothing there."""
    image = photo(96, 64)
    mask = box_mask(image.size, (40, 20, 60, 40))
    # Seed 10: the demo face detector finds one face in the decoded crop.
    payload = {**BASE, "seed": 10, "init_images": [b64(image)], "mask": b64(mask), "mask_blur": 4,
               "inpainting_fill": 1, "inpaint_full_res": True, "inpaint_full_res_padding": 8,
               "restore_faces": True, "override_settings": {"face_restoration_model": "GFPGAN"}}
    restored = sd15_engine.img2img(payload)
    plain = sd15_engine.img2img({**payload, "restore_faces": False})
    assert restored.restorer_calls == 1
    output, original = np.asarray(restored.images[0]), np.asarray(image)
    outside = np.asarray(blur_mask(mask, 4)) == 0
    assert np.array_equal(output[outside], original[outside])
    assert not np.array_equal(output, np.asarray(plain.images[0]))
    assert "Face restoration: GFPGAN" in json.loads(restored.info)["infotexts"][0]
