"""InstantID on the tiny SDXL UNet with the tiny control models written in their real formats: loading, the
IP-Adapter installed and removed, face tokens as the IdentityNet's context, maps, and the detect endpoint."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from engine.control.api import detect
from engine.control.demo import (
    CANNY_FILE,
    CONTROLNET_FOLDER,
    IDENTITYNET_FILE,
    IP_ADAPTER_FILE,
    controlnet_to_ldm,
    write_tiny_control_models,
)
from engine.control.ip_adapter_install import ip_adapter_installed
from engine.control.models import ControlModels, find_controlnet_config, read_ip_adapter
from engine.control.request import prepare_control
from engine.control.residuals import RowLayout
from engine.control.units import parse_controlnet_args
from engine.errors import NotFoundError, RequestError, UnsupportedError
from engine.resources.catalog import ModelCatalog


SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU spinning OpenMP threads cost 10-100×."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("control-models")
    write_tiny_control_models(root)
    return root


@pytest.fixture(scope="module")
def control_models(models_dir):
    return ControlModels(models_dir, [models_dir / "configs"], torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def unet():
    from engine.demo.tiny import tiny_components

    return tiny_components("sdxl", seed=0)["unet"]


def _face_image() -> np.ndarray:
    """A white block: at processor_res 128 the tiny detector sees whole white 32-pixel cells in it."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[16:32, 16:32] = 255
    return image


def _b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _instant_id_units(order="embedding first", **keypoint_extra):
    image = _b64(_face_image())
    embedding = {"image": image, "module": "InsightFace (InstantID)", "model": "ip-adapter_instant_id_sdxl [eb2d3ec0]",
                 "weight": 0.9, "processor_res": 128}
    keypoints = {"image": image, "module": "instant_id_face_keypoints", "model": "control_instant_id_sdxl",
                 "weight": 1, "processor_res": 128, **keypoint_extra}
    args = [embedding, keypoints] if order == "embedding first" else [keypoints, embedding]
    return parse_controlnet_args({"controlnet": {"args": args}})


def _snapshot(unet):
    return ({key: value.clone() for key, value in unet.state_dict().items()}, dict(unet.attn_processors))


def _assert_restored(unet, snapshot):
    weights, processors = snapshot
    now = unet.state_dict()
    assert now.keys() == weights.keys()
    assert all(torch.equal(now[key], value) for key, value in weights.items())
    assert unet.attn_processors.keys() == processors.keys()
    assert all(unet.attn_processors[name] is processor for name, processor in processors.items())
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None


def _reference_resampler(weights: dict, embedding: torch.Tensor) -> torch.Tensor:
    """InstantID's Resampler written from its description (perceiver attention + feed-forward, 4 layers),
    reading the `ip-adapter.bin` keys directly: an independent check of diffusers' conversion."""
    def norm(x, name):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], weights[f"{name}.weight"], weights[f"{name}.bias"])

    x = embedding.reshape(1, 1, -1) @ weights["proj_in.weight"].T + weights["proj_in.bias"]
    latents = weights["latents"].clone()
    for layer in range(4):
        prefix = f"layers.{layer}"
        features, queries = norm(x, f"{prefix}.0.norm1"), norm(latents, f"{prefix}.0.norm2")
        q = queries @ weights[f"{prefix}.0.to_q.weight"].T
        k, v = (torch.cat([features, queries], dim=1) @ weights[f"{prefix}.0.to_kv.weight"].T).chunk(2, dim=-1)
        scale = q.shape[-1] ** -0.25  # one head of 64 in the tiny file
        attention = torch.softmax((q * scale) @ (k * scale).transpose(1, 2), dim=-1)
        latents = (attention @ v) @ weights[f"{prefix}.0.to_out.weight"].T + latents
        hidden = torch.nn.functional.gelu(norm(latents, f"{prefix}.1.0") @ weights[f"{prefix}.1.1.weight"].T)
        latents = hidden @ weights[f"{prefix}.1.3.weight"].T + latents
    return norm(latents @ weights["proj_out.weight"].T + weights["proj_out.bias"], "norm_out")


def test_loaded_controlnets_equal_their_files(models_dir, control_models):
    from safetensors.torch import load_file

    folder = models_dir / CONTROLNET_FOLDER
    canny = control_models.controlnet(folder / CANNY_FILE)
    on_disk = load_file(folder / CANNY_FILE)
    back = controlnet_to_ldm(canny.state_dict(), canny.config)  # the LDM layout A1111's files use
    assert back.keys() == on_disk.keys() and all(torch.equal(back[k], on_disk[k]) for k in on_disk)
    identitynet = control_models.controlnet(folder / IDENTITYNET_FILE)
    on_disk = load_file(folder / IDENTITYNET_FILE)
    assert all(torch.equal(identitynet.state_dict()[k], v) for k, v in on_disk.items())
    assert identitynet.config.cross_attention_dim == 80 and canny.config.cross_attention_dim == 32
    assert control_models.controlnet(folder / CANNY_FILE) is canny  # loaded once


def test_controlnet_configs_are_chosen_by_shape(models_dir):
    roots = [models_dir / "configs"]
    folder = models_dir / CONTROLNET_FOLDER
    assert find_controlnet_config(folder / IDENTITYNET_FILE, roots).name == "tiny-controlnet-sdxl"
    assert find_controlnet_config(folder / CANNY_FILE, roots).name == "tiny-controlnet-sd15"
    with pytest.raises(UnsupportedError, match="is an IP-Adapter"):
        find_controlnet_config(folder / IP_ADAPTER_FILE, roots)
    with pytest.raises(NotFoundError, match="no ControlNet config"):
        find_controlnet_config(folder / CANNY_FILE, [models_dir / "nowhere"])


@torch.no_grad()
def test_ip_adapter_is_gone_after_the_request(unet, models_dir, control_models):
    weights = control_models.ip_adapter(models_dir / CONTROLNET_FOLDER / IP_ADAPTER_FILE)
    snapshot = _snapshot(unet)
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 80)
    added = {"text_embeds": torch.randn(2, 48), "time_ids": torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2, dtype=torch.float32)}
    plain = unet(x, 500, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False)[0]
    face = torch.randn(512)
    embeds = [torch.stack([face, torch.zeros(512)])[:, None, None, :]]
    with ip_adapter_installed(unet, weights, 0.9) as adapter:
        assert len(adapter.processors) == 22 and all(p.scale == [0.9] for p in adapter.processors)
        with_face = unet(x, 500, encoder_hidden_states=context, return_dict=False,
                         added_cond_kwargs={**added, "image_embeds": embeds})[0]
        adapter.set_scale(0.0)
        switched_off = unet(x, 500, encoder_hidden_states=context, return_dict=False,
                            added_cond_kwargs={**added, "image_embeds": embeds})[0]
        tokens = adapter.face_tokens(face)
    assert (with_face - plain).abs().max() > 1e-4  # the image attention is added with the unit's weight
    torch.testing.assert_close(switched_off, plain)
    _assert_restored(unet, snapshot)
    torch.testing.assert_close(unet(x, 500, encoder_hidden_states=context, added_cond_kwargs=added,
                                    return_dict=False)[0], plain, rtol=0, atol=0)
    # Tokens for the face and, for the negative rows, for the all-zero embedding, as InstantID computes them.
    raw = read_ip_adapter(models_dir / CONTROLNET_FOLDER / IP_ADAPTER_FILE)["image_proj"]
    assert tokens.cond.shape == tokens.uncond.shape == (1, 16, 80)
    torch.testing.assert_close(tokens.cond, _reference_resampler(raw, face), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tokens.uncond, _reference_resampler(raw, torch.zeros(512)), rtol=1e-4, atol=1e-5)


def test_ip_adapter_is_removed_when_the_request_fails(unet, models_dir, control_models):
    weights = control_models.ip_adapter(models_dir / CONTROLNET_FOLDER / IP_ADAPTER_FILE)
    snapshot = _snapshot(unet)
    with pytest.raises(RuntimeError, match="boom"), ip_adapter_installed(unet, weights, 1.0):
        raise RuntimeError("boom")
    _assert_restored(unet, snapshot)


@pytest.mark.parametrize("order", ["embedding first", "keypoints first"])
@torch.no_grad()
def test_face_tokens_reach_the_identitynet(unet, models_dir, control_models, order):
    units = _instant_id_units(order)
    request = prepare_control(units, ModelCatalog(models_dir), control_models, (SIZE, SIZE))
    analyser = control_models.face_analyser()
    from engine.control.preprocess import resize_with_pad

    face = analyser.largest_face(resize_with_pad(_face_image(), 128)[0], "image")
    np.testing.assert_array_equal(request.face_unit.embedding.numpy(), face.embedding)
    identitynet = request.map_units[0].model
    seen = {}

    def capture(module, args, kwargs):
        seen["context"] = kwargs["encoder_hidden_states"]

    snapshot = _snapshot(unet)
    hook = identitynet.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with request.applied(unet):
            stack = request.stack_for_pass(unet, SIZE, SIZE, steps=4)
            rows = RowLayout.cond_then_uncond([0, 1], 2)  # two images: cond, cond, uncond, uncond
            x, context = torch.randn(4, 4, 8, 8), torch.randn(4, 77, 80)
            added = {"text_embeds": torch.randn(4, 48),
                     "time_ids": torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 4, dtype=torch.float32)}
            inputs = stack.unet_inputs(x, torch.tensor(700.0), 0, context, added, rows)
            eps = unet(x, 700, encoder_hidden_states=context, return_dict=False, **inputs)[0]
    finally:
        hook.remove()
    # The IdentityNet attended to the face tokens in the cond rows, the zero embedding's in the uncond rows.
    raw = read_ip_adapter(models_dir / CONTROLNET_FOLDER / IP_ADAPTER_FILE)["image_proj"]
    face_tokens = _reference_resampler(raw, request.face_unit.embedding)
    zero_tokens = _reference_resampler(raw, torch.zeros(512))
    expected = torch.cat([face_tokens, face_tokens, zero_tokens, zero_tokens])
    assert seen["context"].shape == (4, 16, 80)
    torch.testing.assert_close(seen["context"], expected, rtol=1e-4, atol=1e-5)
    image_embeds = inputs["added_cond_kwargs"]["image_embeds"][0]
    assert image_embeds.shape == (4, 1, 1, 512)
    assert torch.equal(image_embeds[0, 0, 0], request.face_unit.embedding) and image_embeds[2:].abs().max() == 0
    assert len(inputs["down_block_additional_residuals"]) == 9 and eps.shape == x.shape
    _assert_restored(unet, snapshot)


@torch.no_grad()
def test_every_unet_of_the_request_gets_the_adapter_once(unet, models_dir, control_models):
    from engine.demo.tiny import tiny_components

    hires_unet = tiny_components("sdxl", seed=1)["unet"]  # hires fix with another checkpoint
    request = prepare_control(_instant_id_units(), ModelCatalog(models_dir), control_models, (SIZE, SIZE))
    snapshots = _snapshot(unet), _snapshot(hires_unet)
    with request.applied(unet, hires_unet, unet):
        for model in (unet, hires_unet):
            stack = request.stack_for_pass(model, SIZE, SIZE, steps=2, hires=model is hires_unet)
            assert stack.ip_adapter.adapter.unet is model and len(stack.ip_adapter.adapter.processors) == 22
    _assert_restored(unet, snapshots[0])
    _assert_restored(hires_unet, snapshots[1])
    with pytest.raises(RuntimeError, match="inside applied"):
        request.stack_for_pass(unet, SIZE, SIZE, steps=2)


def test_maps_for_the_response_and_hash_notes(models_dir, control_models):
    units = _instant_id_units()
    request = prepare_control(units, ModelCatalog(models_dir), control_models, (SIZE, SIZE), hires_size=(96, 128))
    # sd-webui-controlnet: per map unit the hires map, then the first pass's; the embedding unit draws none.
    assert [image.size for image in request.detected_maps] == [(96, 128), (SIZE, SIZE)]
    keypoints = np.asarray(request.detected_maps[1])
    assert keypoints.max() == 255 and set(map(tuple, keypoints.reshape(-1, 3))) >= {(0, 0, 0), (0, 0, 255)}
    assert len(request.notes) == 1 and "eb2d3ec0" in request.notes[0]  # the stem found it, the hash differs
    quiet = prepare_control(_instant_id_units(save_detected_map=False), ModelCatalog(models_dir), control_models,
                            (SIZE, SIZE))
    assert quiet.detected_maps == []


def test_controlnet_for_another_family_is_refused(unet, models_dir, control_models):
    image = _b64(_face_image())
    units = parse_controlnet_args({"controlnet": {"args": [
        {"module": "canny", "model": "control_v11p_sd15_canny", "image": image}]}})
    request = prepare_control(units, ModelCatalog(models_dir), control_models, (SIZE, SIZE))
    with pytest.raises(RequestError, match=r"args\[0\]\.model: 'control_v11p_sd15_canny' does not fit"):
        request.stack_for_pass(unet, SIZE, SIZE, steps=4)


def test_unknown_model_lists_the_available_ones(models_dir, control_models):
    image = _b64(_face_image())
    units = parse_controlnet_args({"controlnet": {"args": [{"module": "canny", "model": "depth_v2", "image": image}]}})
    with pytest.raises(NotFoundError, match=r"depth_v2.*control_instant_id_sdxl \[") as error:
        prepare_control(units, ModelCatalog(models_dir), control_models, (SIZE, SIZE))
    assert error.value.field == "alwayson_scripts.controlnet.args[0].model"


def test_faceless_image_is_a_clear_error(models_dir, control_models):
    units = parse_controlnet_args({"controlnet": {"args": [
        {"module": "instant_id_face_embedding", "model": "ip-adapter_instant_id_sdxl",
         "image": _b64(np.zeros((SIZE, SIZE, 3), np.uint8))}]}})
    with pytest.raises(RequestError, match=r"args\[0\]\.image: no face found"):
        prepare_control(units, ModelCatalog(models_dir), control_models, (SIZE, SIZE))


def test_a_sliver_image_has_no_face_rather_than_an_opencv_assertion(models_dir, control_models):
    """A 1×4000 image scales to 0 pixels wide at the detector's input size (found by bench/fuzz.py)."""
    units = parse_controlnet_args({"controlnet": {"args": [
        {"module": "instant_id_face_embedding", "model": "ip-adapter_instant_id_sdxl",
         "image": _b64(np.full((4000, 1, 3), 255, np.uint8))}]}})
    with pytest.raises(RequestError, match=r"args\[0\]\.image: no face found"):
        prepare_control(units, ModelCatalog(models_dir), control_models, (SIZE, SIZE))


def test_detect_returns_the_raw_embedding_as_a_tensor(models_dir, control_models):
    body = detect(ModelCatalog(models_dir), {"controlnet_module": "InsightFace (InstantID)",
                                             "controlnet_input_images": [_b64(_face_image())],
                                             "controlnet_processor_res": 128}, control_models)
    assert body["info"] == "Success" and "images" not in body
    vector = torch.load(io.BytesIO(base64.b64decode(body["tensor"][0])), weights_only=True)
    from engine.control.preprocess import resize_with_pad

    face = control_models.face_analyser().largest_face(resize_with_pad(_face_image(), 128)[0], "image")
    np.testing.assert_array_equal(vector.numpy(), face.embedding)
