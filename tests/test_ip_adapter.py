"""IP-Adapter units (CLIP, FaceID, FaceID Plus) on the tiny demo models in their real single-file formats:
against diffusers' own IP-Adapter path, end to end through the payload, and the UNet restored afterwards."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.control.api import model_list, module_list
from engine.control.image_prompts import prepare_image_prompt
from engine.control.ip_adapters import auto_module
from engine.control.models import ControlModels, read_ip_adapter
from engine.control.request import prepare_control
from engine.control.units import parse_controlnet_args
from engine.errors import RequestError, UnsupportedError
from engine.resources.catalog import ModelCatalog


SEED = 1234
SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def control_models(demo_models):
    return ControlModels(demo_models, [demo_models / "configs"], torch.device("cpu"), torch.float32)


def photo(size: int = 128) -> np.ndarray:
    """A white block on black (the tiny face detectors take it for a face) and a coloured stripe."""
    image = np.zeros((size, size, 3), np.uint8)
    image[16:32, 16:32] = 255
    image[size // 2:, :, 0] = 200
    return image


def b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def unit(module: str, model: str, **extra) -> dict:
    return {"module": module, "model": model, "image": b64(photo()), **extra}


SD15_UNITS = [
    unit("ip-adapter_clip_sd15", "ip-adapter_sd15", weight=0.8),
    unit("ip-adapter_clip_h", "ip-adapter-plus-face_sd15", weight=0.6, guidance_start=0.2, guidance_end=0.7),
    unit("ip-adapter_face_id", "ip-adapter-faceid_sd15"),
    unit("ip-adapter_face_id_plus", "ip-adapter-faceid-plusv2_sd15", weight=0.5),
]


def payload(units, checkpoint: str = "tiny-sd15", steps: int = 3) -> dict:
    body = {"prompt": "a portrait", "negative_prompt": "blurry", "steps": steps, "width": SIZE, "height": SIZE,
            "seed": SEED, "override_settings": {"sd_model_checkpoint": checkpoint}}
    if units:
        body["alwayson_scripts"] = {"controlnet": {"args": units}}
    return body


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


# --- through the payload -------------------------------------------------------------------------------------


def test_several_units_run_end_to_end_and_each_counts(sd15_engine):
    plain = pixels(sd15_engine.txt2img(payload([])))
    result = sd15_engine.txt2img(payload(SD15_UNITS))
    body = result.response()
    assert len(body["images"]) == 1  # IP-Adapter units draw no map
    infotext = json.loads(body["info"])["infotexts"][0]
    for number, sent in enumerate(SD15_UNITS):
        assert f'ControlNet {number}: "Module: {sent["module"]}, Model: {sent["model"]}, Weight: ' in infotext
    with_all = pixels(result)
    assert np.abs(with_all - plain).max() > 0
    # Each unit changes the image: leaving any one out gives another image.
    for left_out in range(len(SD15_UNITS)):
        others = [u for i, u in enumerate(SD15_UNITS) if i != left_out]
        assert np.abs(pixels(sd15_engine.txt2img(payload(others))) - with_all).max() > 0, left_out


def test_weight_zero_is_no_adapter(sd15_engine):
    plain = pixels(sd15_engine.txt2img(payload([])))
    off = [{**sent, "weight": 0.0} for sent in SD15_UNITS]
    np.testing.assert_array_equal(pixels(sd15_engine.txt2img(payload(off))), plain)


def test_next_plain_request_is_bit_identical_and_the_unet_restored(sd15_engine):
    pipe = sd15_engine._pipelines.get(sd15_engine.catalog.find_checkpoint("tiny-sd15"))
    before = {name: tensor.clone() for name, tensor in pipe.unet.state_dict().items()}
    processors = dict(pipe.unet.attn_processors)
    plain = pixels(sd15_engine.txt2img(payload([])))
    sd15_engine.txt2img(payload(SD15_UNITS))
    assert pipe.unet.encoder_hid_proj is None and pipe.unet.config.encoder_hid_dim_type is None
    assert all(pipe.unet.attn_processors[name] is processor for name, processor in processors.items())
    after = pipe.unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    np.testing.assert_array_equal(pixels(sd15_engine.txt2img(payload([]))), plain)


def test_sdxl_ip_adapters_beside_instantid(sd15_engine):
    from tests.test_instantid_e2e import seed_002

    job = seed_002(64, 64, steps=2)["input"]["payload"]
    job["enable_hr"] = False
    instant_id = job["alwayson_scripts"]["controlnet"]["args"]
    units = [*instant_id, unit("ip-adapter_clip_sdxl_plus_vith", "ip-adapter-plus_sdxl_vit-h", weight=0.7),
             unit("ip-adapter_clip_g", "ip-adapter_sdxl")]
    alone = pixels(sd15_engine.txt2img({**job, "alwayson_scripts": {"controlnet": {"args": instant_id}}}))
    together = sd15_engine.txt2img({**job, "alwayson_scripts": {"controlnet": {"args": units}}})
    assert len(together.response()["images"]) == 2  # the result and the keypoint map
    assert np.abs(pixels(together) - alone).max() > 0


def test_listings_include_the_modules_and_models(sd15_engine):
    modules = module_list(sd15_engine.catalog)["module_list"]
    for name in ("ip-adapter-auto", "ip-adapter_clip_sd15", "ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl_plus_vith",
                 "ip-adapter_face_id", "ip-adapter_face_id_plus"):
        assert name in modules
    assert modules.index("ip-adapter-auto") == 1  # priority 1000, right after "none"
    labels = module_list(sd15_engine.catalog, {"alias_names": "true"})["module_list"]
    assert "ip-adapter_clip_h" in labels and "ip-adapter_clip_g" in labels
    stems = [title.split(" [")[0] for title in model_list(sd15_engine.catalog)["model_list"]]
    for stem in ("ip-adapter_sd15", "ip-adapter-plus_sd15", "ip-adapter-plus-face_sd15", "ip-adapter_sdxl_vit-h",
                 "ip-adapter-plus_sdxl_vit-h", "ip-adapter-faceid_sd15", "ip-adapter-faceid-plusv2_sd15"):
        assert stem in stems


# --- against diffusers' own IP-Adapter path ------------------------------------------------------------------


def _prompt(demo_models, control_models, module: str, model: str, image: np.ndarray):
    (parsed,) = parse_controlnet_args({"controlnet": {"args": [{"module": module, "model": model,
                                                                 "image": b64(image)}]}})
    path = ModelCatalog(demo_models).find_controlnet(model, "model").entry.path
    return prepare_image_prompt(parsed, path, control_models, [image])


@pytest.mark.parametrize(("module", "model", "hidden"), [("ip-adapter_clip_sd15", "ip-adapter_sd15", False),
                                                         ("ip-adapter_clip_h", "ip-adapter-plus_sd15", True)])
def test_clip_features_match_diffusers_encode_image(demo_models, control_models, module, model, hidden):
    """On a 224-pixel image (where sd-webui-controlnet's squash and diffusers' centre crop agree)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessor

    from engine.control.clip_vision import MEAN, STD
    from engine.demo.tiny import tiny_components

    image = photo(224)
    prompt = _prompt(demo_models, control_models, module, model, image)
    encoder = control_models.annotator("clip_h").model
    reference = StableDiffusionPipeline(**tiny_components("sd15", seed=0), safety_checker=None,
                                        requires_safety_checker=False, image_encoder=encoder,
                                        feature_extractor=CLIPImageProcessor(size=224, crop_size=224, resample=3,
                                                                             image_mean=list(MEAN),
                                                                             image_std=list(STD)))
    cond, uncond = reference.encode_image(Image.fromarray(image), "cpu", 1, output_hidden_states=hidden)
    torch.testing.assert_close(prompt.cond, cond, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(prompt.uncond, uncond, rtol=1e-4, atol=1e-5)


FAMILIES = [("sd15", "ip-adapter_clip_sd15", "ip-adapter_sd15"),
            ("sd15", "ip-adapter_clip_h", "ip-adapter-plus-face_sd15"),
            ("sd15", "ip-adapter_face_id", "ip-adapter-faceid_sd15"),
            ("sd15", "ip-adapter_face_id_plus", "ip-adapter-faceid-plusv2_sd15"),
            ("sdxl", "ip-adapter_clip_sdxl_plus_vith", "ip-adapter-plus_sdxl_vit-h"),
            ("sdxl", "ip-adapter_clip_sdxl", "ip-adapter_sdxl")]


@pytest.mark.parametrize(("family", "module", "model"), FAMILIES)
def test_images_match_diffusers_load_ip_adapter(demo_models, control_models, family, module, model):
    """Our loop with the unit against diffusers' pipeline after `load_ip_adapter` of the same file, on the same
    components, scheduler and noise, fed the same image inputs (diffusers' documented FaceID / FaceID Plus
    recipe)."""
    from engine.demo.tiny import tiny_components
    from engine.generate import Models, generate
    from engine.pipeline import A1111Pipeline
    from engine.settings import Settings
    from engine.translate import to_plan
    from engine.wire.txt2img import Txt2ImgRequest
    from tests.test_pipeline_parity import PIPELINES, REFERENCE_SCHEDULERS

    weight, sampler, steps = 0.7, "DPM++ 2M Karras", 4
    sent = [{"module": module, "model": model, "weight": weight, "image": b64(photo())}]
    body = {**payload(sent, steps=steps), "sampler_name": sampler, "cfg_scale": 5}
    components = tiny_components(family, seed=0)
    ours = A1111Pipeline(**{k: components.get(k) for k in A1111Pipeline._get_signature_keys(A1111Pipeline)[0]})
    control = prepare_control(parse_controlnet_args(body["alwayson_scripts"]), ModelCatalog(demo_models),
                              control_models, (SIZE, SIZE))
    plan = to_plan(Txt2ImgRequest.parse(body), Settings())
    output = generate(plan, Models(ours, control=control))
    assert ours.unet.encoder_hid_proj is None

    (prompt,) = control.image_prompts
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    reference = PIPELINES[family](**tiny_components(family, seed=0), **(extra if family == "sd15" else {}))
    reference.scheduler = REFERENCE_SCHEDULERS[sampler](reference.scheduler.config, SEED)
    weights = read_ip_adapter(ModelCatalog(demo_models).find_controlnet(model, "model").entry.path)
    reference.load_ip_adapter(weights, subfolder="", weight_name="", image_encoder_folder=None)
    reference.set_ip_adapter_scale(weight)
    if prompt.clip_cond is not None:
        projection = reference.unet.encoder_hid_proj.image_projection_layers[0]
        projection.clip_embeds = torch.cat([prompt.clip_uncond, prompt.clip_cond])[:, None]
        projection.shortcut = prompt.adapter.shortcut
    expected = reference(prompt=body["prompt"], negative_prompt=body["negative_prompt"], num_inference_steps=steps,
                         guidance_scale=5.0, height=SIZE, width=SIZE,
                         latents=torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(SEED)),
                         ip_adapter_image_embeds=[torch.cat([prompt.uncond, prompt.cond])[:, None]],
                         output_type="np").images[0]
    ours_pixels = np.asarray(output.images[0], dtype=np.int16)
    reference_pixels = np.floor(expected * 255).astype(np.int16)
    assert np.abs(ours_pixels - reference_pixels).max() <= 1


def other_photo(size: int = 128) -> np.ndarray:
    """Another face-like block, elsewhere, over a green stripe: different features from `photo`."""
    image = np.zeros((size, size, 3), np.uint8)
    image[40:60, 48:68] = 255
    image[:, size // 2:, 1] = 180
    return image


@pytest.mark.parametrize(("family", "module", "model"), [FAMILIES[0], FAMILIES[3]])
def test_several_images_average_the_projected_tokens(demo_models, control_models, family, module, model):
    """A unit with two images: the tokens each image projects to (diffusers' projection) are averaged, as
    sd-webui-controlnet's `ImageEmbed.average_of` does, and diffusers' attention reads that one token set. The
    reference is diffusers' pipeline fed those averaged tokens through an identity projection."""
    from engine.demo.tiny import tiny_components
    from engine.generate import Models, generate
    from engine.pipeline import A1111Pipeline
    from engine.settings import Settings
    from engine.translate import to_plan
    from engine.wire.txt2img import Txt2ImgRequest
    from tests.test_pipeline_parity import PIPELINES, REFERENCE_SCHEDULERS

    weight, sampler, steps = 0.9, "DPM++ 2M Karras", 3
    sent = [{"module": module, "model": model, "weight": weight,
             "image": [{"image": b64(photo())}, {"image": b64(other_photo()), "mask": None}]}]
    body = {**payload(sent, steps=steps), "sampler_name": sampler, "cfg_scale": 5}
    components = tiny_components(family, seed=0)
    ours = A1111Pipeline(**{k: components.get(k) for k in A1111Pipeline._get_signature_keys(A1111Pipeline)[0]})
    control = prepare_control(parse_controlnet_args(body["alwayson_scripts"]), ModelCatalog(demo_models),
                              control_models, (SIZE, SIZE))
    (prompt,) = control.image_prompts
    assert prompt.cond.shape[0] == 2
    output = generate(to_plan(Txt2ImgRequest.parse(body), Settings()), Models(ours, control=control))

    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    reference = PIPELINES[family](**tiny_components(family, seed=0), **extra)
    reference.scheduler = REFERENCE_SCHEDULERS[sampler](reference.scheduler.config, SEED)
    weights = read_ip_adapter(ModelCatalog(demo_models).find_controlnet(model, "model").entry.path)
    reference.load_ip_adapter(weights, subfolder="", weight_name="", image_encoder_folder=None)
    reference.set_ip_adapter_scale(weight)
    layers = reference.unet.encoder_hid_proj.image_projection_layers
    projection = layers[0]
    with torch.no_grad():
        if prompt.clip_cond is not None:
            projection.clip_embeds = torch.cat([prompt.clip_uncond, prompt.clip_cond])[:, None]
            projection.shortcut = prompt.adapter.shortcut
        tokens = projection(torch.cat([prompt.uncond, prompt.cond])).unflatten(0, (2, 2)).mean(dim=1)
    layers[0] = torch.nn.Identity()
    expected = reference(prompt=body["prompt"], negative_prompt=body["negative_prompt"], num_inference_steps=steps,
                         guidance_scale=5.0, height=SIZE, width=SIZE,
                         latents=torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(SEED)),
                         ip_adapter_image_embeds=[tokens[:, None]], output_type="np").images[0]
    ours_pixels = np.asarray(output.images[0], dtype=np.int16)
    assert np.abs(ours_pixels - np.floor(expected * 255).astype(np.int16)).max() <= 1
    # Concatenating the two images' tokens (diffusers' own reading of a list) gives another image.
    single = generate(to_plan(Txt2ImgRequest.parse(payload([{**sent[0], "image": b64(photo())}], steps=steps)
                                                   | {"sampler_name": sampler, "cfg_scale": 5}), Settings()),
                      Models(ours, control=prepare_control(
                          parse_controlnet_args({"controlnet": {"args": [{**sent[0], "image": b64(photo())}]}}),
                          ModelCatalog(demo_models), control_models, (SIZE, SIZE))))
    assert np.abs(np.asarray(single.images[0], dtype=np.int16) - ours_pixels).max() > 0


# --- what is checked before running --------------------------------------------------------------------------


def test_faceid_reads_the_normed_embedding_of_the_largest_face(demo_models, control_models):
    image = photo()
    prompt = _prompt(demo_models, control_models, "ip-adapter_face_id", "ip-adapter-faceid_sd15", image)
    face = control_models.face_analyser("buffalo_l").largest_face(image, "image")
    expected = face.embedding / np.linalg.norm(face.embedding)
    np.testing.assert_allclose(prompt.cond[0].numpy(), expected, rtol=1e-6)
    assert prompt.uncond.abs().max() == 0 and prompt.adapter.shortcut is False


@pytest.mark.parametrize(("module", "model", "message"), [
    ("ip-adapter_face_id", "ip-adapter_sd15", "use it with module 'ip-adapter_clip_sd15'"),
    ("ip-adapter_clip_sd15", "ip-adapter-faceid_sd15", "use it with module 'ip-adapter_face_id'"),
    ("ip-adapter_clip_g", "ip-adapter_sdxl_vit-h", "reads 16-wide CLIP features"),
    ("ip-adapter_clip_sdxl_plus_vith", "ip-adapter_sdxl", "reads 24-wide CLIP features"),
])
def test_a_module_that_does_not_fit_the_model_is_named(demo_models, control_models, module, model, message):
    with pytest.raises(RequestError, match=message):
        _prompt(demo_models, control_models, module, model, photo())


def test_an_adapter_for_another_family_is_refused_and_nothing_stays(demo_models, control_models):
    from engine.demo.tiny import tiny_components

    unet = tiny_components("sdxl", seed=0)["unet"]
    processors = dict(unet.attn_processors)
    units = parse_controlnet_args({"controlnet": {"args": [unit("ip-adapter_clip_sd15", "ip-adapter_sd15")]}})
    request = prepare_control(units, ModelCatalog(demo_models), control_models, (SIZE, SIZE))
    with pytest.raises(RequestError, match="does not fit this checkpoint"), request.applied(unet):
        pass
    assert unet.encoder_hid_proj is None and dict(unet.attn_processors) == processors


def test_a_faceless_image_is_a_clear_error(demo_models, control_models):
    with pytest.raises(RequestError, match="no face found"):
        _prompt(demo_models, control_models, "ip-adapter_face_id", "ip-adapter-faceid_sd15",
                np.zeros((64, 64, 3), np.uint8))


def test_a_clip_mask_is_refused():
    mask = np.zeros((128, 128, 3), np.uint8)
    mask[:64] = 255
    with pytest.raises(UnsupportedError, match="CLIP mask"):
        parse_controlnet_args({"controlnet": {"args": [{**unit("ip-adapter_clip_sd15", "ip-adapter_sd15"),
                                                        "mask": b64(mask)}]}})


@pytest.mark.parametrize(("model", "module"), [
    ("ip-adapter_sd15 [abcd1234]", "ip-adapter_clip_sd15"), ("ip-adapter-plus-face_sd15", "ip-adapter_clip_sd15"),
    ("ip-adapter_sdxl", "ip-adapter_clip_sdxl"), ("ip-adapter_sdxl_vit-h", "ip-adapter_clip_sd15"),
    ("ip-adapter_sd15_vit-G", "ip-adapter_clip_sdxl"), ("ip-adapter-faceid_sd15", "ip-adapter_face_id"),
    ("ip-adapter-faceid-plusv2_sd15", "ip-adapter_face_id_plus"),
    ("ip-adapter_instant_id_sdxl", "instant_id_face_embedding"),
])
def test_ip_adapter_auto_picks_the_module_by_model_name(model, module):
    assert auto_module(model) == module
    (parsed,) = parse_controlnet_args({"controlnet": {"args": [unit("ip-adapter-auto", model)]}})
    assert parsed.module.name == module and parsed.module_name == "ip-adapter-auto"


@torch.no_grad()
def test_each_unit_has_its_scale_window_and_passes(demo_models, control_models):
    """Per UNet call each adapter's scale is its unit's weight inside its guidance window and 0 outside it or
    in a pass its `hr_option` leaves out (sd-webui-controlnet `PlugableIPAdapter.patch_forward`)."""
    from engine.control.residuals import RowLayout
    from engine.demo.tiny import tiny_components

    unet = tiny_components("sd15", seed=0)["unet"]
    sent = [unit("ip-adapter_clip_sd15", "ip-adapter_sd15", weight=0.8, guidance_start=0.5),
            unit("ip-adapter_face_id", "ip-adapter-faceid_sd15", weight=0.3, hr_option="Low res only")]
    request = prepare_control(parse_controlnet_args({"controlnet": {"args": sent}}), ModelCatalog(demo_models),
                              control_models, (SIZE, SIZE))
    rows = RowLayout.cond_then_uncond([0], 1)
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with request.applied(unet):
        scales = {}
        for hires in (False, True):
            stack = request.stack_for_pass(unet, SIZE, SIZE, steps=4, hires=hires)
            for call in (0, 4):  # sampling fractions 0 and 3/4
                inputs = stack.unet_inputs(x, torch.tensor(500.0), call, context, None, rows)
                scales[hires, call] = stack.ip_adapter.adapter.processors[0].scale
                embeds = inputs["added_cond_kwargs"]["image_embeds"]
                unet(x, 500, encoder_hidden_states=context, added_cond_kwargs={"image_embeds": embeds})
        assert [e.shape for e in embeds] == [(2, 1, 16), (2, 1, 512)]
        assert embeds[0][1].abs().max() == 0 and embeds[1][1].abs().max() == 0  # the uncond row: zeros
        torch.testing.assert_close(embeds[0][0], request.image_prompts[0].cond)
    assert scales == {(False, 0): [0.0, 0.3], (False, 4): [0.8, 0.3], (True, 0): [0.0, 0.0], (True, 4): [0.8, 0.0]}
    assert unet.encoder_hid_proj is None


def test_img2img_unit_without_image_takes_the_init_image(sd15_engine):
    init = b64(photo(SIZE))
    body = {**payload([]), "init_images": [init], "denoising_strength": 0.6}
    plain = pixels(sd15_engine.img2img(body))
    without_image = {"module": "ip-adapter_face_id_plus", "model": "ip-adapter-faceid-plusv2_sd15"}
    implied = pixels(sd15_engine.img2img({**body, "alwayson_scripts": {"controlnet": {"args": [without_image]}}}))
    explicit = pixels(sd15_engine.img2img({**body, "alwayson_scripts": {"controlnet": {"args": [
        {**without_image, "image": init}]}}}))
    assert np.abs(implied - plain).max() > 0
    np.testing.assert_array_equal(implied, explicit)


@pytest.mark.parametrize(("module", "error"), [("ip-adapter_clip_sd15", UnsupportedError),
                                               ("ip-adapter_pulid", UnsupportedError)])
def test_detect_and_pulid_are_refused_with_one_line(demo_models, module, error):
    from engine.control.api import detect

    with pytest.raises(error, match="controlnet_module"):
        detect(ModelCatalog(demo_models), {"controlnet_module": module, "controlnet_input_images": [b64(photo())]})


def test_instantid_module_needs_the_instantid_adapter(demo_models, control_models):
    from tests.test_instantid_e2e import seed_002

    instant_id = seed_002(64, 64)["input"]["payload"]["alwayson_scripts"]["controlnet"]["args"]
    wrong = [{**instant_id[0], "model": "ip-adapter-plus_sdxl_vit-h"}, instant_id[1]]
    units = parse_controlnet_args({"controlnet": {"args": wrong}})
    with pytest.raises(RequestError, match="is a plus IP-Adapter; use it with module 'ip-adapter_clip_sd15'"):
        prepare_control(units, ModelCatalog(demo_models), control_models, (SIZE, SIZE))
