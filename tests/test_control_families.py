"""ControlNet families end to end on the tiny demo models: ControlNet 1.1 single files, SDXL, union (ProMax),
T2I-Adapter, the inpaint family (with the img2img init image and mask), shuffle's pooled model, ADetailer's
ControlNet, and the unit infotext. Each model runs the real diffusers class; the counts are checked against
sd-webui-controlnet's (one forward per UNet evaluation in the guidance window)."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.control import request as control_request
from engine.errors import RequestError


SIZE = 64


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _photo(size=(SIZE, SIZE)) -> Image.Image:
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[8:40, 12:50] = (230, 200, 40)
    pixels[30:60, 30:60] = (20, 90, 210)
    return Image.fromarray(pixels)


def _mask(size=(SIZE, SIZE)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def _payload(units, checkpoint="tiny-sd15", steps=3, **extra) -> dict:
    return {"prompt": "a fox", "steps": steps, "width": SIZE, "height": SIZE, "seed": 3, "cfg_scale": 5,
            "sampler_name": "Euler", "override_settings": {"sd_model_checkpoint": checkpoint},
            "alwayson_scripts": {"controlnet": {"args": units}}, **extra}


@pytest.fixture
def counted(monkeypatch):
    """Every ControlRequest the engine prepares, to read its model-call count afterwards."""
    made = []
    original = control_request.prepare_control

    def spy(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(control_request, "prepare_control", spy)  # the engine imports it per request
    return made


@pytest.mark.parametrize(("module", "model", "window", "expected"), [
    # Euler, 3 steps, CFG batched: one UNet call per step. sd-webui-controlnet compares sampling_step / steps
    # with the window, sampling_step being the step of the previous callback: 0, 0, 1 → 0, 0, 1/3, so the
    # window [0.3, 1] keeps only the last call.
    ("invert", "control_v11f1p_sd15_depth", (0.0, 1.0), 3),
    ("shuffle", "control_v11e_sd15_shuffle", (0.0, 1.0), 3),
    ("tile_resample", "control_v11f1p_sd15_depth", (0.3, 1.0), 1),
])
def test_sd15_controlnet_files_run_in_the_guidance_window(sd15_engine, counted, module, model, window, expected):
    unit = {"module": module, "model": model, "image": _b64(_photo()), "guidance_start": window[0],
            "guidance_end": window[1]}
    result = sd15_engine.txt2img(_payload([unit]))
    assert counted[-1].model_calls == expected
    assert len(result.response()["images"]) == 2  # the image and the detected map


def test_the_shuffle_model_pools_its_residuals_for_prompt_rows_only(sd15_engine, counted):
    sd15_engine.txt2img(_payload([{"module": "none", "model": "control_v11e_sd15_shuffle", "image": _b64(_photo())}]))
    item = counted[-1].map_units[0]
    assert item.model.config.global_pool_conditions  # "shuffle" in the file name, as sd-webui-controlnet
    stack = counted[-1].stack_for_pass(sd15_engine._pipelines.get(sd15_engine.resolve_checkpoint("tiny-sd15")).unet,
                                       SIZE, SIZE, steps=1)
    assert stack.controlnets[0].cond_only


def test_union_controlnet_gets_the_control_type_of_its_module(sd15_engine, counted):
    unit = {"module": "canny", "model": "controlnet-union-sdxl-promax", "image": _b64(_photo())}
    sd15_engine.txt2img(_payload([unit], checkpoint="tiny-sdxl"))
    prepared = counted[-1]
    assert prepared.map_units[0].unit.union_type == "Hard Edge" and prepared.model_calls == 3
    unit["union_control_type"] = "Depth"
    sd15_engine.txt2img(_payload([unit], checkpoint="tiny-sdxl"))
    assert counted[-1].map_units[0].unit.union_type == "Depth"


def test_union_controlnet_without_a_control_type_is_a_clear_error(sd15_engine):
    unit = {"module": "none", "model": "controlnet-union-sdxl-promax", "image": _b64(_photo())}
    with pytest.raises(RequestError, match=r"args\[0\]\.union_control_type: a union ControlNet needs"):
        sd15_engine.txt2img(_payload([unit], checkpoint="tiny-sdxl"))


def test_sdxl_controlnet_single_file_with_diffusers_keys(sd15_engine, counted):
    unit = {"module": "blur_gaussian", "model": "diffusers_xl_depth_tiny", "image": _b64(_photo()),
            "control_mode": "ControlNet is more important"}
    result = sd15_engine.txt2img(_payload([unit], checkpoint="tiny-sdxl"))
    assert result.images[0].size == (SIZE, SIZE) and counted[-1].model_calls == 3


def test_t2i_adapter_from_tencentarc_keys_matches_diffusers_own(sd15_engine, counted, demo_models):
    """The original-format file loads into diffusers' T2IAdapter with the same weights as the conversion the
    published diffusers folders went through; its features are computed once per pass."""
    from diffusers import T2IAdapter
    from safetensors.torch import load_file

    from engine.control.models import adapter_to_diffusers

    unit = {"module": "invert", "model": "t2iadapter_depth_sd15v2", "image": _b64(_photo())}
    sd15_engine.txt2img(_payload([unit]))
    adapter = counted[-1].map_units[0].model
    assert isinstance(adapter, T2IAdapter) and counted[-1].model_calls == 1
    original = load_file(str(demo_models / "ControlNet" / "t2iadapter_depth_sd15v2.safetensors"))
    assert set(adapter_to_diffusers(original)) == set(adapter.state_dict())


def test_t2i_adapter_residuals_enter_the_unet(sd15_engine, counted):
    plain = sd15_engine.txt2img(_payload([]))
    adapted = sd15_engine.txt2img(_payload([{"module": "invert", "model": "t2iadapter_depth_sd15v2",
                                             "image": _b64(_photo()), "weight": 2.0}]))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(adapted.images[0]))


def test_inpaint_unit_with_an_image_and_mask_object(sd15_engine, counted):
    unit = {"module": "inpaint_only", "model": "control_v11p_sd15_inpaint",
            "image": {"image": _b64(_photo()), "mask": _b64(_mask())}}
    result = sd15_engine.txt2img(_payload([unit]))
    prepared = counted[-1]
    detected = prepared.map_units[0].detected
    assert detected.shape == (SIZE, SIZE, 4) and set(np.unique(detected[:, :, 3])) == {0, 255}
    # The model reads the colour with masked pixels at -1 (sd-webui-controlnet's inpaint protocol).
    pipe = sd15_engine._pipelines.get(sd15_engine.resolve_checkpoint("tiny-sd15"))
    stack = prepared.stack_for_pass(pipe.unet, SIZE, SIZE, steps=1, pipe=pipe)
    hint = stack.controlnets[0].hint
    assert hint[0, :, 32, 32].tolist() == [-1.0, -1.0, -1.0] and hint[0, :, 2, 2].min() >= 0
    assert len(stack.blends) == 1 and stack.blends[0].kind == "inpaint_only"
    # Outside the (dilated, blurred) mask the decoded image is the control image (pixel post-processing).
    corner = np.asarray(result.images[0])[:4, :4].astype(int)
    assert np.abs(corner - np.asarray(_photo())[:4, :4].astype(int)).max() <= 1


def test_inpaint_only_on_img2img_takes_the_init_image_and_mask_and_runs_as_inpaint(sd15_engine, counted):
    payload = _payload([{"module": "inpaint_only", "model": "control_v11p_sd15_inpaint"}],
                       init_images=[_b64(_photo())], mask=_b64(_mask()), denoising_strength=0.6,
                       inpaint_full_res=False)
    result = sd15_engine.img2img(payload)
    unit = counted[-1].map_units[0].unit
    assert unit.module.name == "inpaint" and unit.image.size == (SIZE, SIZE)
    assert np.asarray(unit.mask).max() == 255  # the img2img mask, blurred by mask_blur
    assert any("inpaint_global_harmonious" in warning for warning in result.warnings)
    info = json.loads(result.info)
    assert 'ControlNet 0: "Module: inpaint_only, Model: control_v11p_sd15_inpaint' in info["infotexts"][0]


def test_img2img_unit_without_image_takes_the_init_image(sd15_engine, counted):
    payload = _payload([{"module": "canny", "model": "control_v11f1p_sd15_depth", "input_image": None}],
                       init_images=[_b64(_photo())], denoising_strength=0.5)
    payload["alwayson_scripts"]["controlnet"]["args"][0].pop("input_image")
    sd15_engine.img2img(payload)
    assert counted[-1].map_units[0].unit.image.size == (SIZE, SIZE)


def test_txt2img_unit_without_image_is_an_error(sd15_engine):
    with pytest.raises(RequestError, match=r"args\[0\]\.image: is required"):
        sd15_engine.txt2img(_payload([{"module": "canny", "model": "control_v11f1p_sd15_depth"}]))


def test_infotext_carries_sd_webui_controlnets_unit_entries(sd15_engine):
    unit = {"input_image": _b64(_photo()), "module": "canny", "model": "control_v11f1p_sd15_depth", "weight": 0.8,
            "resize_mode": 0, "control_mode": 1, "guidance": 0.9}
    result = sd15_engine.txt2img(_payload([unit]))
    text = json.loads(result.info)["infotexts"][0]
    assert ('ControlNet 0: "Module: canny, Model: control_v11f1p_sd15_depth, Weight: 0.8, Resize Mode: Just Resize, '
            'Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0.0, Guidance End: 0.9, '
            'Pixel Perfect: False, Control Mode: My prompt is more important"') in text


def test_adetailer_controlnet_runs_inside_the_inpaint_pass(sd15_engine, counted, monkeypatch):
    """ADetailer's `ad_controlnet_*`: one unit per inpaint pass, the current image cut to the mask region, its
    ControlNet evaluated at every UNet call of that pass."""
    from engine.detailer import detect
    from engine.detailer.masks import Detections, box_mask

    def one_box(self, image, confidence):
        return Detections(image.size, ((16.0, 16.0, 48.0, 48.0),), (0.9,), (box_mask(image.size, (16, 16, 48, 48)),))

    monkeypatch.setattr(detect.YoloDetector, "detect", one_box)
    prepared = []
    original = control_request.prepare_control
    monkeypatch.setattr(control_request, "prepare_control",
                        lambda *a, **k: prepared.append(original(*a, **k)) or prepared[-1])
    payload = _payload([], steps=4)
    payload["alwayson_scripts"] = {"ADetailer": {"args": [True, False, {
        "ad_model": "face_yolov8n.pt", "ad_controlnet_model": "control_v11p_sd15_inpaint",
        "ad_denoising_strength": 0.5, "ad_controlnet_guidance_end": 0.2}]}}
    result = sd15_engine.txt2img(payload)
    (detail,) = prepared
    unit = detail.map_units[0].unit
    assert unit.module.name == "inpaint" and unit.pixel_perfect and unit.where.endswith("ad_controlnet")
    # 4 steps at strength 0.5 → int(0.5 · 4) + 1 = 3 steps at fractions 0, 0, 1/3: [0, 0.2] keeps two.
    assert detail.model_calls == 2
    assert "ADetailer ControlNet model: control_v11p_sd15_inpaint" in json.loads(result.info)["infotexts"][0]


def test_adetailer_passthrough_runs_the_requests_units_inside_the_inpaint_pass(sd15_engine, counted, monkeypatch):
    """ADetailer's "Passthrough": the request's own ControlNet unit guides the generation and then, with its
    image cut to the detected region ("only masked"), every UNet call of the inpaint pass."""
    from engine.detailer import detect
    from engine.detailer.masks import Detections, box_mask

    def one_box(self, image, confidence):
        return Detections(image.size, ((16.0, 16.0, 48.0, 48.0),), (0.9,), (box_mask(image.size, (16, 16, 48, 48)),))

    monkeypatch.setattr(detect.YoloDetector, "detect", one_box)
    unit = {"module": "invert", "model": "control_v11p_sd15_inpaint", "image": _b64(_photo()), "guidance_end": 0.3}
    payload = _payload([unit], steps=4)
    payload["alwayson_scripts"]["ADetailer"] = {"args": [True, False, {
        "ad_model": "face_yolov8n.pt", "ad_controlnet_model": "Passthrough", "ad_denoising_strength": 0.5,
        "ad_inpaint_only_masked_padding": 0}]}
    result = sd15_engine.txt2img(payload)
    generation, detail = counted
    # Guidance [0, 0.3]; the generation's 4 steps are at fractions 0, 0, 1/4, 1/2 (sd-webui-controlnet reads the
    # step counter before the sampler advances it) → 3 calls; the inner pass's 3 at 0, 0, 1/3 → 2.
    assert generation.model_calls == 3 and detail.model_calls == 2
    passed = detail.map_units[0].unit
    assert passed.module.name == "invert" and passed.field("model") == "alwayson_scripts.controlnet.args[0].model"
    # The unit's image was cut to the padded detection box, so the inner map is not the whole photo's.
    whole = generation.map_units[0].unit.image
    assert passed.image.size != whole.size or passed.image.tobytes() != whole.tobytes()
    assert "ADetailer ControlNet model: Passthrough" in json.loads(result.info)["infotexts"][0]


def test_the_shared_control_models_are_unchanged_by_requests(sd15_engine, demo_models):
    controlnet = sd15_engine.control_models.controlnet(demo_models / "ControlNet" / "control_v11p_sd15_inpaint.safetensors")
    before = {k: v.clone() for k, v in controlnet.state_dict().items()}
    unit = {"module": "inpaint_only", "model": "control_v11p_sd15_inpaint",
            "image": {"image": _b64(_photo()), "mask": _b64(_mask())}}
    sd15_engine.txt2img(_payload([unit]))
    assert all(torch.equal(before[k], v) for k, v in controlnet.state_dict().items())


@pytest.mark.parametrize("model", ["t2iadapter_depth_sd15v2", "control_v11p_sd15_inpaint"])
def test_an_sd15_control_model_on_sdxl_is_a_clear_error(sd15_engine, model):
    unit = {"module": "invert", "model": model, "image": _b64(_photo())}
    with pytest.raises(RequestError, match=rf"args\[0\]\.model: '{model}' does not fit this checkpoint"):
        sd15_engine.txt2img(_payload([unit], checkpoint="tiny-sdxl"))
