"""Unit inputs and the small pieces around them, without the engine: image/mask forms, the img2img fallback and
"only masked" crop, inpaint maps through `fit_map`, the x0 blends against sd-webui-controlnet's formulas, the
T2I-Adapter key conversion, ADetailer's module choice and the union control types."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from engine.control.detailer_units import detailer_controlnets
from engine.control.effects import UnetBlend, box_blur, latent_mask, noised_start
from engine.control.hints import model_hint
from engine.control.img2img_units import with_init_image
from engine.control.models import adapter_to_diffusers, file_kind
from engine.control.preprocess import fit_map
from engine.control.units import CROP_AND_RESIZE, JUST_RESIZE, RESIZE_AND_FILL, parse_controlnet_args
from engine.detailer.args import ADetailerUnit
from engine.errors import RequestError, UnsupportedError
from engine.plan import InitPlan


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


PHOTO = Image.new("RGB", (40, 20), (10, 200, 30))
MASK = Image.new("L", (40, 20), 0)
MASK.paste(255, (10, 5, 20, 15))


def _unit(**values):
    (unit,) = parse_controlnet_args({"controlnet": {"args": [{"model": "m", **values}]}}, img2img=True)
    return unit


@pytest.mark.parametrize("form", [
    lambda: {"image": {"image": _b64(PHOTO), "mask": _b64(MASK)}},
    lambda: {"image": [_b64(PHOTO), _b64(MASK)]},
    lambda: {"input_image": _b64(PHOTO), "mask": _b64(MASK)},
    lambda: {"image": _b64(PHOTO), "mask_image": _b64(MASK)},
])
def test_every_image_and_mask_form_gives_the_inpaint_unit_its_mask(form):
    unit = _unit(module="inpaint_only", **form())
    assert unit.image.size == (40, 20) and unit.mask.mode == "L"
    assert np.array_equal(np.asarray(unit.mask), np.asarray(MASK))


def test_rgba_images_are_composited_on_white_as_hwc3():
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert _unit(module="canny", image=_b64(transparent)).image.getpixel((0, 0)) == (255, 255, 255)


def test_a_mask_of_another_size_is_an_error():
    with pytest.raises(RequestError, match=r"\.image\.mask: is 4x4, the image 40x20"):
        _unit(module="inpaint", image={"image": _b64(PHOTO), "mask": _b64(Image.new("L", (4, 4)))})


def test_img2img_fallback_uses_the_init_image_resize_mode_and_processed_mask():
    units = (_unit(module="inpaint"), _unit(module="canny", image=_b64(PHOTO), resize_mode="Just Resize"))
    init = InitPlan(images=(PHOTO,), strength=0.5, resize_mode=2, mask=MASK, mask_blur=(0, 0), only_masked=False)
    (inpaint, canny), notes = with_init_image(units, init, 40, 20)
    assert inpaint.resize_mode == RESIZE_AND_FILL and np.array_equal(np.asarray(inpaint.mask), np.asarray(MASK))
    assert canny.resize_mode == JUST_RESIZE and canny.mask is None and not notes
    inverted = InitPlan(images=(PHOTO,), strength=0.5, resize_mode=0, mask=MASK, mask_blur=(0, 0), invert_mask=True,
                        only_masked=False)
    (inpaint, _), _ = with_init_image(units, inverted, 40, 20)
    assert np.asarray(inpaint.mask)[10, 15] == 0 and np.asarray(inpaint.mask)[0, 0] == 255


def test_only_masked_inpainting_cuts_the_input_to_the_masked_region():
    """sd-webui-controlnet `try_crop_image_with_a1111_mask`: region (10,5)-(20,15) grown to the pass's 2:1."""
    striped = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (20, 1, 3)))
    unit = _unit(module="canny", image=_b64(striped))
    init = InitPlan(images=(PHOTO,), strength=0.5, resize_mode=0, mask=MASK, mask_blur=(0, 0), only_masked=True,
                    padding=0)
    (cropped,), _ = with_init_image((unit,), init, 40, 20)
    assert cropped.image.size == (40, 20)
    columns = np.asarray(cropped.image)[10, :, 0]
    assert columns.min() >= 5 * 6 - 6 and columns.max() <= 25 * 6 + 6  # x 5..25 of the stripes, stretched ×2
    (kept,), _ = with_init_image((_unit(module="canny", image=_b64(striped), inpaint_crop_input_image=False),),
                                 init, 40, 20)
    assert np.array_equal(np.asarray(kept.image), np.asarray(striped))


def test_inpaint_maps_keep_a_binary_mask_and_fill_borders_masked():
    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[:, :, :3] = 120
    rgba[2:6, 4:10, 3] = 255
    fitted = fit_map(rgba, RESIZE_AND_FILL, 20, 20)
    assert fitted.shape == (20, 20, 4) and set(np.unique(fitted[:, :, 3])) == {0, 255}
    assert (fitted[0, :, 3] == 255).all()  # the fill is masked (sd-webui-controlnet's inpaint hijack)
    cropped = fit_map(rgba, CROP_AND_RESIZE, 10, 10)
    assert cropped.shape == (10, 10, 4)
    hint = model_hint(fitted)
    assert hint.shape == (1, 3, 20, 20) and hint[0, 0, 0, 0] == -1.0 and hint[0, 0, 10, 10] == pytest.approx(120 / 255)


def test_inpaint_only_blend_follows_sd_webui_controlnets_formula():
    torch.manual_seed(0)
    alphas = torch.linspace(0.99, 0.01, 1000)
    x, eps, origin = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(1, 4, 8, 8)
    pixel_mask = torch.zeros(1, 1, 64, 64)
    pixel_mask[:, :, 16:40, 16:40] = 1
    mask = latent_mask(pixel_mask)
    blend = UnetBlend("inpaint_only", origin, 0.7, mask=mask)
    t = torch.tensor([500.0, 500.0])
    out = blend.apply(eps, x, t, alphas, torch.tensor([1.0, 0.0]))
    a = alphas[500]
    x0 = (x / a.sqrt() - (1 / a - 1).sqrt() * eps) * mask + origin * (1 - mask)  # predict_start_from_noise
    expected = ((x / a.sqrt() - x0) / (1 / a - 1).sqrt()) * 0.7 + eps * 0.3  # predict_noise_from_start
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert mask.shape == (1, 1, 8, 8) and mask[0, 0, 0, 0] == 0 and mask[0, 0, 3, 3] == 1


def test_colorfix_swaps_the_low_frequencies_and_box_blur_replicates_borders():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    blurred = box_blur(x, 1)
    assert blurred.shape == x.shape and blurred[0, 0, 1, 1] == x[0, 0, :3, :3].mean()
    alphas = torch.full((1000,), 0.5)
    origin, eps = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    out = UnetBlend("colorfix", origin, 1.0, radius=2).apply(eps, torch.ones(1, 4, 8, 8), torch.tensor([10.0]),
                                                              alphas, torch.ones(1))
    x0 = (1 - 0.5**0.5 * out) / 0.5**0.5  # the clean estimate behind the new ε
    torch.testing.assert_close(x0, torch.zeros_like(x0), atol=1e-5, rtol=0)  # flat: all low frequency, all origin's


def test_lama_noise_is_q_sample_at_999():
    alphas = torch.linspace(0.99, 0.01, 1000)
    noise, origin = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(noised_start(noise, origin, alphas), alphas[999].sqrt() * origin +
                               (1 - alphas[999]).sqrt() * noise)
    assert noised_start(torch.zeros(1, 4, 4, 4), origin, alphas).abs().sum() == 0  # other sizes: unchanged


def test_tencentarc_adapter_keys_map_onto_diffusers_full_adapter():
    from diffusers import T2IAdapter

    adapter = T2IAdapter(in_channels=3, channels=[8, 16, 32, 32], num_res_blocks=2, adapter_type="full_adapter")
    original = {}
    for key, value in adapter.state_dict().items():
        parts = key.removeprefix("adapter.").split(".")
        if parts[0] == "body" and parts[2] == "resnets":
            key = ".".join(["body", str(int(parts[1]) * 2 + int(parts[3])), *parts[4:]])
        elif parts[0] == "body":
            key = ".".join(["body", str(int(parts[1]) * 2), *parts[2:]])
        else:
            key = ".".join(parts)
        original[key] = value
    assert adapter_to_diffusers(original).keys() == adapter.state_dict().keys()
    assert file_kind(original) == "t2i_adapter" and file_kind(adapter.state_dict()) == "t2i_adapter"
    assert file_kind({"task_embedding": 0, "conv_in.weight": 0}) == "union"
    assert file_kind({"control_model.input_blocks.0.0.weight": 0}) == "controlnet"


@pytest.mark.parametrize(("model", "module", "expected"), [
    ("control_v11p_sd15_inpaint [ebff9138]", "None", "inpaint"),
    ("control_v11p_sd15_lineart", "None", "lineart_coarse"),
    ("control_v11p_sd15_openpose", "None", "openpose_full"),
    ("control_v11f1e_sd15_tile", "None", "tile_resample"),
    ("control_v11f1p_sd15_depth", "None", "depth"),
    ("control_v11p_sd15_inpaint", "inpaint_only+lama", "inpaint_only+lama"),
])
def test_adetailer_controlnet_module_follows_the_model_name(model, module, expected):
    unit = ADetailerUnit(ad_model="a.pt", ad_controlnet_model=model, ad_controlnet_module=module,
                         ad_controlnet_weight=0.6)
    (control,) = detailer_controlnets(unit, "alwayson_scripts.ADetailer.args[2].ad_controlnet_model", ())
    assert control.module.name == expected and control.pixel_perfect and control.weight == 0.6
    assert control.image is None and control.field("model") == "alwayson_scripts.ADetailer.args[2].ad_controlnet_model"
    assert detailer_controlnets(ADetailerUnit(ad_model="a.pt"), "x", ()) == ()


def test_adetailer_passthrough_keeps_the_requests_units():
    """ADetailer's "Passthrough" leaves the request's ControlNet units in its inner pass (as parsed, so an
    img2img unit without an image takes the inner pass's image); IP-Adapter units there are refused."""
    units = parse_controlnet_args({"controlnet": {"args": [{"module": "canny", "model": "control_canny"}]}},
                                  img2img=True)
    unit = ADetailerUnit(ad_model="a.pt", ad_controlnet_model="Passthrough")
    assert detailer_controlnets(unit, "w.ad_controlnet_model", units) == units
    assert detailer_controlnets(unit, "w.ad_controlnet_model", ()) == ()
    faces = parse_controlnet_args({"controlnet": {"args": [{"module": "ip-adapter_clip_sd15", "model": "ip-adapter_sd15"}]}},
                                  img2img=True)
    with pytest.raises(UnsupportedError, match=r"^w\.ad_controlnet_model: \"Passthrough\" with an IP-Adapter unit"):
        detailer_controlnets(unit, "w.ad_controlnet_model", faces)


def test_adetailer_cannot_run_a_face_embedding_module():
    unit = ADetailerUnit(ad_model="a.pt", ad_controlnet_model="ip-adapter", ad_controlnet_module="instant_id_face_embedding")
    with pytest.raises(UnsupportedError, match="ad_controlnet_module"):
        detailer_controlnets(unit, "w.ad_controlnet_model", ())


@pytest.mark.parametrize(("module", "given", "expected"), [
    ("canny", None, "Hard Edge"), ("lineart", None, "Hard Edge"), ("mlsd", None, "Hard Edge"),
    ("hed", None, "Soft Edge"), ("pidinet_scribble", None, "Soft Edge"), ("depth_zoe", None, "Depth"),
    ("openpose_full", None, "OpenPose"), ("normal_bae", None, "Normal Map"), ("tile_resample", None, "Tile"),
    ("blur_gaussian", None, "Tile"), ("inpaint_only", None, "Inpaint"), ("none", None, None),
    ("none", "segmentation", "Segmentation"), ("canny", "Unknown", "Hard Edge"),
])
def test_union_control_type_comes_from_the_field_or_the_modules_tag(module, given, expected):
    image = {"image": _b64(PHOTO), "mask": _b64(MASK)} if "inpaint" in module else _b64(PHOTO)
    unit = _unit(module=module, image=image, **({"union_control_type": given} if given else {}))
    assert unit.union_type == expected


@pytest.mark.parametrize("images", [[{"a": 1}], [7], ["x", None]])
def test_detect_refuses_input_images_that_are_not_strings(images, tmp_path):
    """Found by bench/fuzz.py: a non-string item reached the decoder as an AttributeError."""
    import types

    from engine.control.api import detect
    from engine.errors import RequestError

    with pytest.raises(RequestError, match=r"^controlnet_input_images: must be a list of base64 image strings"):
        detect(types.SimpleNamespace(root=tmp_path), {"controlnet_module": "canny", "controlnet_input_images": images})
