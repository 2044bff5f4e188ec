"""A1111 v1.10's own API tests (`test/test_txt2img.py`, `test_img2img.py`, `test_extras.py`, `test_utils.py`),
ported case by case against this worker's HTTP server on the tiny demo models: the same payloads, A1111's
status codes and response shapes. The test images are our own (a gradient and a mask), not A1111's files."""

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.server import create_app, serve_in_background


@pytest.fixture(scope="module")
def base_url(sd15_engine):
    with serve_in_background(create_app(sd15_engine)) as url:
        yield url


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=600) as client:
        yield client


def data_url(image: Image.Image) -> str:
    """A1111's conftest sends its test files as `data:image/png;base64,…`."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def img2img_basic_image_base64() -> str:
    gradient = np.linspace(0, 255, 48 * 48 * 3).reshape(48, 48, 3).astype(np.uint8)
    return data_url(Image.fromarray(gradient))


@pytest.fixture(scope="module")
def mask_basic_image_base64() -> str:
    mask = Image.new("RGB", (48, 48), "black")
    ImageDraw.Draw(mask).ellipse((12, 12, 36, 36), fill="white")
    return data_url(mask)


@pytest.fixture
def simple_txt2img_request() -> dict:
    return {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0,
        "firstphase_height": 0, "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "",
        "prompt": "example prompt", "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
        "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
        "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
    }


@pytest.fixture
def simple_img2img_request(img2img_basic_image_base64) -> dict:
    return {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64,
        "include_init_images": False, "init_images": [img2img_basic_image_base64], "inpaint_full_res": False,
        "inpaint_full_res_padding": 0, "inpainting_fill": 0, "inpainting_mask_invert": False, "mask": None,
        "mask_blur": 4, "n_iter": 1, "negative_prompt": "", "override_settings": {}, "prompt": "example prompt",
        "resize_mode": 0, "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
        "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
        "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
    }


def assert_generation_body(response: httpx.Response, images: int, size: tuple[int, int] = (64, 64)) -> dict:
    """A1111's `TextToImageResponse` / `ImageToImageResponse`: images, parameters, info (a JSON string)."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert {"images", "parameters", "info"} <= set(body) <= {"images", "parameters", "info", "warnings"}
    assert len(body["images"]) == images
    assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).size == size
    info = json.loads(body["info"])
    assert len(info["infotexts"]) >= images - info["index_of_first_image"]
    return body


# --- test_txt2img.py ----------------------------------------------------------------------------------------


def test_txt2img_simple_performed(http, simple_txt2img_request):
    body = assert_generation_body(http.post("/sdapi/v1/txt2img", json=simple_txt2img_request), 1)
    assert body["parameters"]["sampler_index"] == "Euler a"


def test_txt2img_with_negative_prompt_performed(http, simple_txt2img_request):
    simple_txt2img_request["negative_prompt"] = "example negative prompt"
    assert_generation_body(http.post("/sdapi/v1/txt2img", json=simple_txt2img_request), 1)


def test_txt2img_with_complex_prompt_performed(http, simple_txt2img_request):
    simple_txt2img_request["prompt"] = "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]"
    assert_generation_body(http.post("/sdapi/v1/txt2img", json=simple_txt2img_request), 1)


def test_txt2img_not_square_image_performed(http, simple_txt2img_request):
    simple_txt2img_request["height"] = 128
    assert_generation_body(http.post("/sdapi/v1/txt2img", json=simple_txt2img_request), 1, (64, 128))


def test_txt2img_with_hrfix_performed(http, simple_txt2img_request):
    # denoising_strength 0 with hires fix: A1111 upscales and denoises nothing.
    simple_txt2img_request["enable_hr"] = True
    body = assert_generation_body(http.post("/sdapi/v1/txt2img", json=simple_txt2img_request), 1, (128, 128))
    assert "Denoising strength: 0" in json.loads(body["info"])["infotexts"][0]


def test_txt2img_with_tiling_performed(http, simple_txt2img_request):
    simple_txt2img_request["tiling"] = True
    assert_generation_body(http.post("/sdapi/v1/txt2img", json=simple_txt2img_request), 1)


def test_txt2img_with_restore_faces_performed(http, simple_txt2img_request):
    simple_txt2img_request["restore_faces"] = True
    assert_generation_body(http.post("/sdapi/v1/txt2img", json=simple_txt2img_request), 1)


@pytest.mark.parametrize("sampler", ["PLMS", "DDIM", "UniPC"])
def test_txt2img_with_vanilla_sampler_performed(http, simple_txt2img_request, sampler):
    simple_txt2img_request["sampler_index"] = sampler
    body = assert_generation_body(http.post("/sdapi/v1/txt2img", json=simple_txt2img_request), 1)
    assert json.loads(body["info"])["sampler_name"] == sampler


def test_txt2img_multiple_batches_performed(http, simple_txt2img_request):
    simple_txt2img_request["n_iter"] = 2
    assert_generation_body(http.post("/sdapi/v1/txt2img", json=simple_txt2img_request), 2)


def test_txt2img_batch_performed(http, simple_txt2img_request):
    simple_txt2img_request["batch_size"] = 2
    assert_generation_body(http.post("/sdapi/v1/txt2img", json=simple_txt2img_request), 2)


def test_txt2img_with_nulls_as_older_clients_send_them(http, simple_txt2img_request):
    """The payload of A1111's older `basic_features` API test: nulls for styles, negative prompt, eta…"""
    payload = {**simple_txt2img_request, "styles": None, "negative_prompt": None, "eta": None, "s_tmax": None,
               "override_settings": None, "sampler_name": None, "sampler_index": "Euler", "cfg_scale": 17.0}
    assert_generation_body(http.post("/sdapi/v1/txt2img", json=payload), 1)


# --- test_img2img.py ----------------------------------------------------------------------------------------


def test_img2img_simple_performed(http, simple_img2img_request):
    body = assert_generation_body(http.post("/sdapi/v1/img2img", json=simple_img2img_request), 1)
    assert body["parameters"]["init_images"] is None  # not echoed without include_init_images


def test_inpainting_masked_performed(http, simple_img2img_request, mask_basic_image_base64):
    simple_img2img_request["mask"] = mask_basic_image_base64
    assert_generation_body(http.post("/sdapi/v1/img2img", json=simple_img2img_request), 1)


def test_inpainting_with_inverted_masked_performed(http, simple_img2img_request, mask_basic_image_base64):
    simple_img2img_request["mask"] = mask_basic_image_base64
    simple_img2img_request["inpainting_mask_invert"] = True
    assert_generation_body(http.post("/sdapi/v1/img2img", json=simple_img2img_request), 1)


def test_img2img_sd_upscale_performed(http, simple_img2img_request):
    simple_img2img_request["script_name"] = "sd upscale"
    simple_img2img_request["script_args"] = ["", 8, "Lanczos", 2.0]
    body = assert_generation_body(http.post("/sdapi/v1/img2img", json=simple_img2img_request), 1, (96, 96))
    assert body["parameters"]["script_name"] == "sd upscale"


# --- test_extras.py -----------------------------------------------------------------------------------------


def test_simple_upscaling_performed(http, img2img_basic_image_base64):
    payload = {
        "resize_mode": 0, "show_extras_results": True, "gfpgan_visibility": 0, "codeformer_visibility": 0,
        "codeformer_weight": 0, "upscaling_resize": 2, "upscaling_resize_w": 128, "upscaling_resize_h": 128,
        "upscaling_crop": True, "upscaler_1": "Lanczos", "upscaler_2": "None", "extras_upscaler_2_visibility": 0,
        "image": img2img_basic_image_base64,
    }
    response = http.post("/sdapi/v1/extra-single-image", json=payload)
    assert response.status_code == 200 and set(response.json()) == {"image", "html_info"}
    assert Image.open(io.BytesIO(base64.b64decode(response.json()["image"]))).size == (96, 96)


def test_png_info_performed(http, img2img_basic_image_base64):
    # A1111's test posts this to extra-single-image (not png-info); with no upscaler the image comes back.
    response = http.post("/sdapi/v1/extra-single-image", json={"image": img2img_basic_image_base64})
    assert response.status_code == 200 and set(response.json()) == {"image", "html_info"}


def test_interrogate_performed(http, img2img_basic_image_base64):
    # Likewise posted to extra-single-image by A1111's test; `model` is an unknown field there.
    payload = {"image": img2img_basic_image_base64, "model": "clip"}
    assert http.post("/sdapi/v1/extra-single-image", json=payload).status_code == 200


# --- test_utils.py ------------------------------------------------------------------------------------------


def test_options_write(http):
    response = http.get("/sdapi/v1/options")
    assert response.status_code == 200
    pre_value = response.json()["send_seed"]
    assert http.post("/sdapi/v1/options", json={"send_seed": not pre_value}).status_code == 200
    response = http.get("/sdapi/v1/options")
    assert response.status_code == 200
    assert response.json()["send_seed"] == (not pre_value)
    http.post("/sdapi/v1/options", json={"send_seed": pre_value})


@pytest.mark.parametrize(
    ("url", "shape"),
    [
        ("sdapi/v1/cmd-flags", dict),
        ("sdapi/v1/samplers", list),
        ("sdapi/v1/upscalers", list),
        ("sdapi/v1/sd-models", list),
        ("sdapi/v1/hypernetworks", list),
        ("sdapi/v1/face-restorers", list),
        ("sdapi/v1/realesrgan-models", list),
        ("sdapi/v1/prompt-styles", list),
        ("sdapi/v1/embeddings", dict),
        ("sdapi/v1/scripts", dict),
        ("sdapi/v1/script-info", list),
    ],
)
def test_get_api_url(http, url, shape):
    response = http.get(f"/{url}")
    assert response.status_code == 200
    assert isinstance(response.json(), shape)


# --- script errors, as A1111's API answers them ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ({"script_name": "no such script"}, "Script 'no such script' not found"),
        ({"alwayson_scripts": {"no such script": {"args": []}}}, "Script 'no such script' not found"),
        ({"alwayson_scripts": {"x/y/z plot": {"args": []}}}, "Cannot have a selectable script"),
    ],
)
def test_script_errors_are_422(http, simple_txt2img_request, payload, detail):
    response = http.post("/sdapi/v1/txt2img", json={**simple_txt2img_request, **payload})
    assert response.status_code == 422
    assert detail in response.json()["detail"]
