"""A1111's own always-on scripts in `alwayson_scripts`: names checked as A1111 checks them, positional args
mapped onto the request's fields (the request's own fields win), the rest refused with A1111's error."""

import pytest
from PIL import Image

from engine.errors import RequestError, UnsupportedError
from engine.imaging.png import png_base64
from engine.imaging.vae_tiling import VaeTiling
from engine.settings import Settings
from engine.translate import to_img2img_plan, to_plan
from engine.translate.alwayson import BUILTIN_SCRIPTS
from engine.wire.img2img import Img2ImgRequest
from engine.wire.scripts import BUILTIN_ALWAYSON_SCRIPTS, script_info, script_names
from engine.wire.txt2img import Txt2ImgRequest


def plan_for(alwayson: dict, **payload):
    request = Txt2ImgRequest.parse({"prompt": "x", **payload, "alwayson_scripts": alwayson})
    return to_plan(request, Settings())


def img2img_plan_for(alwayson: dict, **payload):
    init = png_base64(Image.new("RGB", (64, 64)), None)
    request = Img2ImgRequest.parse({"prompt": "x", "init_images": [init], "width": 64, "height": 64,
                                    **payload, "alwayson_scripts": alwayson})
    return to_img2img_plan(request, Settings())


def test_every_listed_builtin_script_has_a_reader():
    assert {spec.name for spec in BUILTIN_ALWAYSON_SCRIPTS} == set(BUILTIN_SCRIPTS)


def test_seed_script_sets_seed_and_variation_when_extra_is_ticked():
    plan = plan_for({"Seed": {"args": [1234, True, 99, 0.3, 0, 0]}})
    noise = plan.noise
    assert (noise.seeds, noise.subseeds, noise.subseed_strength) == ((1234,), (99,), 0.3)
    assert any("alwayson_scripts.Seed: applied seed=1234" in w for w in plan.warnings)
    # Without "Extra" the variation fields are left alone, as A1111's setup reads them.
    plain = plan_for({"seed": {"args": [77, False, 99, 0.3, 0, 0]}})
    assert (plain.noise.seeds, plain.noise.subseed_strength) == ((77,), 0.0)


def test_request_fields_win_over_the_script_as_in_a1111():
    plan = plan_for({"Seed": {"args": [1234]}}, seed=5)
    assert plan.noise.seeds == (5,)
    assert any("the request's own seed kept" in w for w in plan.warnings)


def test_sampler_script_sets_steps_sampler_and_schedule():
    plan = plan_for({"Sampler": {"args": [7, "DPM++ 2M", "Karras"]}})
    assert plan.num_inference_steps == 7
    assert (plan.sampler.choice.sampler, plan.sampler.choice.schedule) == ("DPM++ 2M", "Karras")


def test_refiner_script_reaches_the_refiner_plan():
    plan = plan_for({"Refiner": {"args": [True, "tiny-sdxl-refiner", 0.6]}})
    assert (plan.refiner.checkpoint, plan.refiner.switch_at) == ("tiny-sdxl-refiner", 0.6)
    assert plan_for({"Refiner": {"args": [True, "tiny-sdxl-refiner", 0.6]}}, refiner_checkpoint="other",
                    refiner_switch_at=0.5).refiner.checkpoint == "other"
    assert plan_for({"Refiner": {"args": [False, "tiny-sdxl-refiner", 0.6]}}).refiner is None


@pytest.mark.parametrize("name", ["Comments", "Hypertile", "Extra options", "Tiled Diffusion", "tiled vae"])
def test_scripts_without_effect_here_are_accepted_when_off(name):
    assert plan_for({name: {"args": []}}).prompts == ("x",)


def test_args_a1111_ignores_are_ignored_with_a_warning():
    plan = plan_for({"Extra options": {"args": [0.5]}, "Hypertile": {"args": [True]}})
    assert sum("ignored" in w for w in plan.warnings) == 2


def test_tiled_vae_maps_onto_the_vae_tiling():
    plan = plan_for({"Tiled VAE": {"args": [True, 1024, 64, True, True, True, False]}})
    assert plan.vae_tiling == VaeTiling(above_pixels=0, tile_size=512, overlap=128)
    assert plan_for({"Tiled VAE": {"args": [False, 1024, 64]}}).vae_tiling is None


@pytest.mark.parametrize(
    ("alwayson", "field"),
    [
        ({"Tiled Diffusion": {"args": [True, "MultiDiffusion"]}}, "alwayson_scripts.Tiled Diffusion.args[0]"),
        ({"Tiled VAE": {"args": [True, 1024, 4]}}, "alwayson_scripts.Tiled VAE.args[2]"),
    ],
)
def test_what_would_change_the_image_is_refused(alwayson, field):
    with pytest.raises(RequestError) as error:
        plan_for(alwayson)
    assert error.value.field == field


def test_soft_inpainting_exists_in_img2img_only():
    assert img2img_plan_for({"Soft Inpainting": {"args": [False]}}).prompts == ("x",)
    with pytest.raises(UnsupportedError):
        img2img_plan_for({"soft inpainting": {"args": [True, 1, 0.5, 4, 0, 0.5, 2]}})
    with pytest.raises(RequestError, match="Script 'Soft Inpainting' not found"):
        plan_for({"Soft Inpainting": {"args": [False]}})


def test_unknown_and_selectable_names_get_a1111s_errors():
    with pytest.raises(RequestError, match="Script 'Regional Prompter' not found") as unknown:
        plan_for({"Regional Prompter": {"args": []}})
    assert type(unknown.value) is RequestError  # HTTP 422, as A1111's HTTPException
    with pytest.raises(RequestError, match="Cannot have a selectable script in the always on scripts params"):
        plan_for({"X/Y/Z plot": {"args": []}})
    with pytest.raises(RequestError, match="Script 'nope' not found"):
        to_plan(Txt2ImgRequest.parse({"script_name": "nope"}), Settings())


def test_listings_name_every_script_of_each_tab():
    extensions = {"adetailer": "ADetailer", "controlnet": "ControlNet"}
    txt2img, img2img = script_names(extensions, False), script_names(extensions, True)
    assert {"x/y/z plot", "prompt matrix", "seed", "refiner", "adetailer"} <= set(txt2img)
    assert "sd upscale" not in txt2img and {"sd upscale", "loopback", "soft inpainting"} <= set(img2img)
    info = script_info(extensions)
    xyz = next(entry for entry in info if entry["name"] == "x/y/z plot" and not entry["is_img2img"])
    assert xyz["is_alwayson"] is False and len(xyz["args"]) == 18
    assert set(xyz["args"][0]) == {"label", "value", "minimum", "maximum", "step", "choices"}
    assert sum(entry["name"] == "seed" for entry in info) == 2  # once per tab, as A1111 lists them
