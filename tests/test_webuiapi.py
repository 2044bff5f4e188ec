"""A real A1111 client (the `webuiapi` package) against `python -m engine serve`'s app on a real uvicorn."""

import numpy as np
import pytest
import webuiapi
from PIL import Image

from engine import Engine
from engine.server import create_app, serve_in_background


SMALL = {"prompt": "a lighthouse", "seed": 5, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def api(demo_models):
    engine = Engine.from_models_dir(demo_models, device="cpu", default_checkpoint="tiny-sd15")
    with serve_in_background(create_app(engine)) as url:
        # The constructor already asks GET /scripts to learn which extensions the server has.
        yield webuiapi.WebUIApi(baseurl=f"{url}/sdapi/v1")


def test_client_sees_adetailer_and_models(api):
    # From GET /scripts; webuiapi then sends (disabled) ADetailer arguments with every call.
    assert api.has_adetailer
    titles = api.util_get_model_names()
    assert any(title.startswith("tiny-sd15.safetensors") for title in titles)
    assert "Euler a" in api.util_get_sampler_names() and "karras" in api.util_get_scheduler_names()


def test_txt2img_returns_images_info_and_parameters(api):
    result = api.txt2img(**SMALL, batch_size=2)
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [5, 6] and result.info["sampler_name"] == "Euler"
    assert result.parameters["prompt"] == "a lighthouse"
    # The infotext travels inside the PNG, as A1111 writes it; png-info reads it back.
    assert result.images[1].info["parameters"] == result.info["infotexts"][1]
    read_back = api.png_info(result.images[1])
    assert read_back.info == result.info["infotexts"][1]
    assert read_back.json["parameters"]["Seed"] == "6" and read_back.json["parameters"]["Size-1"] == "64"


def test_options_switch_the_model_and_clip_skip(api):
    api.util_set_model("tiny-sdxl")  # webuiapi matches the title, then POSTs sd_model_checkpoint
    try:
        assert api.util_get_current_model().startswith("tiny-sdxl")
        result = api.txt2img(**SMALL)
        assert result.info["sd_model_name"] == "tiny-sdxl"
        api.set_options({"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "tiny-sd15"})
        assert api.get_options()["CLIP_stop_at_last_layers"] == 2
        assert api.txt2img(**SMALL).info["clip_skip"] == 2
    finally:
        api.set_options({"CLIP_stop_at_last_layers": 1, "sd_model_checkpoint": "tiny-sd15"})


def test_unknown_checkpoint_in_options_is_an_a1111_error_body(api):
    response = api.session.post(f"{api.baseurl}/options", json={"sd_model_checkpoint": "nope"})
    assert response.status_code == 404
    body = response.json()
    assert set(body) == {"error", "detail", "body", "errors"} and "tiny-sd15" in body["detail"]


def test_img2img_keeps_size_and_changes_the_image(api):
    source = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))).convert("RGB")
    result = api.img2img(images=[source], denoising_strength=0.6, **SMALL)
    assert result.images[0].size == (64, 64)
    assert not np.array_equal(np.asarray(result.images[0].convert("RGB")), np.asarray(source))
    assert result.parameters["init_images"] is None  # A1111 echoes them only with include_init_images


def test_txt2img_with_adetailer_units_as_webuiapi_sends_them(api):
    # webuiapi still sends the legacy `ad_mask_k_largest`; the random tiny YOLO needs a tiny confidence.
    unit = webuiapi.ADetailer(ad_model="face_yolov8n.pt", ad_confidence=0.001, ad_mask_k_largest=1)
    result = api.txt2img(**SMALL, adetailer=[unit])
    assert len(result.images) == 1
    assert "ADetailer model: face_yolov8n.pt" in result.info["infotexts"][0]


def test_txt2img_with_a_controlnet_unit_returns_the_detected_map(api):
    edges = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))).convert("RGB")
    unit = webuiapi.ControlNetUnit(
        image=edges, module="canny", model="control_v11p_sd15_canny", processor_res=64
    )
    result = api.txt2img(**SMALL, controlnet_units=[unit])
    # The result first, then the canny map, as A1111 + ControlNet returns them.
    assert len(result.images) == 2
    assert result.images[1].size == (64, 64)
