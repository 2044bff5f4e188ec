"""Every size or count a payload controls is bounded before any work, with one error naming the field and the
limit: ADetailer's steps and inpaint size, the hires target, prompts, scripts' generation counts, extras."""

import pytest

from engine.errors import RequestError
from engine.scripts import ScriptContext, run_script
from engine.settings import Settings
from engine.translate import to_img2img_plan, to_plan
from engine.wire.img2img import Img2ImgRequest
from engine.wire.scripts import selectable_script
from engine.wire.txt2img import Txt2ImgRequest


SETTINGS = Settings(max_steps=40, max_pixels=256 * 256, max_prompt_chars=100, max_script_generations=6)
BASE = {"prompt": "a cat", "width": 64, "height": 64, "steps": 4, "sampler_name": "Euler"}


def plan(**fields):
    return to_plan(Txt2ImgRequest.parse({**BASE, **fields}), SETTINGS)


def adetailer(**unit):
    return {"ADetailer": {"args": [True, False, {"ad_model": "face_yolov8n.pt", **unit}]}}


@pytest.mark.parametrize(
    ("unit", "message"),
    [
        ({"ad_use_steps": True, "ad_steps": 41},
         r"^alwayson_scripts\.ADetailer\.args\[2\]\.ad_steps: must be an integer from 1 to 40, got 41"),
        ({"ad_use_inpaint_width_height": True, "ad_inpaint_width": 4096, "ad_inpaint_height": 4096},
         r"^alwayson_scripts\.ADetailer\.args\[2\]\.ad_inpaint_width: .*4096x4096.* at most 65536 pixels"),
        ({"ad_prompt": "x" * 101}, r"^alwayson_scripts\.ADetailer\.args\[2\]\.ad_prompt: .*101 characters; at most 100"),
    ],
)
def test_adetailer_sizes_and_counts_are_bounded(unit, message):
    with pytest.raises(RequestError, match=message):
        plan(alwayson_scripts=adetailer(**unit))


def test_unused_adetailer_sizes_are_not_checked():
    # A1111 ignores ad_steps without ad_use_steps; clients send large defaults there.
    (unit,) = plan(alwayson_scripts=adetailer(ad_steps=500, ad_inpaint_width=9000)).detailers
    assert unit.num_inference_steps == 4


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hr_scale": float("inf")}, r"^hr_scale: must be a finite number"),
        ({"hr_scale": float("nan")}, r"^hr_scale: must be a finite number"),
        ({"hr_scale": 1e300}, r"^hr_scale: the hires size .* must be within 65536 pixels"),
        ({"hr_resize_x": 10**12}, r"^hr_resize_x: the hires size .* must be within 65536 pixels"),
    ],
)
def test_hires_target_is_bounded(fields, message):
    with pytest.raises(RequestError, match=message):
        plan(enable_hr=True, denoising_strength=0.5, **fields)


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"])
def test_prompts_are_bounded(field):
    with pytest.raises(RequestError, match=rf"^{field}: is 101 characters; at most 100 accepted"):
        plan(enable_hr=True, denoising_strength=0.5, **{field: "y" * 101})


def test_a_prompt_list_is_bounded_per_entry():
    with pytest.raises(RequestError, match=r"^prompt\[1\]: is 101 characters; at most 100 accepted"):
        plan(prompt=["ok", "z" * 101], batch_size=2)


def test_styles_count_toward_the_prompt_length(tmp_path):
    from engine.prompts.styles import StyleDatabase

    (tmp_path / "styles.csv").write_text('name,prompt,negative_prompt\nlong,"{prompt}, ' + "w" * 98 + '",\n')
    request = Txt2ImgRequest.parse({**BASE, "prompt": "cat", "styles": ["long"]})
    with pytest.raises(RequestError, match=r"^prompt: is 103 characters"):
        to_plan(request, SETTINGS, styles=StyleDatabase([str(tmp_path / "styles.csv")]))


def never_generates(*args, **kwargs):
    raise AssertionError("a script generated before its counts were checked")


def run(script: str, args, img2img=False, upscalers=None, **fields):
    model = Img2ImgRequest if img2img else Txt2ImgRequest
    request = model.parse({**BASE, "script_name": script, "script_args": args, **fields})
    context = ScriptContext(request, img2img, never_generates, upscalers, settings=SETTINGS)
    return run_script(selectable_script(script, img2img), context)


def xyz(x_type, x_values, y_type=0, y_values=""):
    return [x_type, x_values, [], y_type, y_values, [], 0, "", [], False, False, False, False, False, False,
            False, 0, False]


def test_xyz_range_is_bounded_before_it_is_expanded():
    # 10**12 values would exhaust memory long before the grid is checked.
    with pytest.raises(RequestError, match=r"^script_args\[1\] .*1000000000000 values; at most 6"):
        run("X/Y/Z plot", xyz("Steps", "1-1000000000000"))


def test_xyz_cells_are_bounded():
    with pytest.raises(RequestError, match=r"^script_args: the grid has 3x3x1 = 9 cells; at most 6"):
        run("X/Y/Z plot", xyz("Steps", "1, 2, 3", "CFG Scale", "5, 6, 7"))


def test_prompts_from_file_lines_are_bounded():
    with pytest.raises(RequestError, match=r"^script_args\[3\]: holds 7 prompt lines; at most 6"):
        run("Prompts from file or textbox", [False, False, "start", "\n".join(["a"] * 7)])


def test_loopback_loops_are_bounded():
    with pytest.raises(RequestError, match=r"^script_args\[0\] .*: 4 loops × n_iter 2 = 8 generations; at most 6"):
        run("Loopback", [4, 0.5, "Linear", "None"], img2img=True, init_images=[tiny_png()],
            denoising_strength=0.5, n_iter=2)


def test_sd_upscale_size_and_tiles_are_bounded_before_upscaling(sd15_engine):
    with pytest.raises(RequestError, match=r"^script_args\[3\] .*: the upscaled image would be 6400x6400; at most 65536"):
        run("SD upscale", ["", 0, "Lanczos", 100.0], img2img=True, upscalers=sd15_engine.upscalers,
            init_images=[tiny_png()], denoising_strength=0.5)
    # 256x256 from 64x64 tiles with 8 px overlap: 5 × 5 tiles.
    with pytest.raises(RequestError, match=r"^script_args\[3\] .*: 25 tiles × n_iter 1 = 25 tiles to redraw; at most 6"):
        run("SD upscale", ["", 8, "Lanczos", 4.0], img2img=True, upscalers=sd15_engine.upscalers,
            init_images=[tiny_png()], denoising_strength=0.5)


def test_extras_scale_must_be_finite():
    from PIL import Image

    from engine.upscale.extras import ExtrasSingleImageRequest, upscale_for_extras
    from engine.upscale.registry import Upscalers

    image = Image.new("RGB", (8, 8))
    request = ExtrasSingleImageRequest.parse({"image": "x", "upscaling_resize": float("inf"),
                                              "upscaler_1": "Lanczos"})
    with pytest.raises(RequestError, match=r"^upscaling_resize: must give a finite scale"):
        upscale_for_extras(image, request, Upscalers(None, "cpu", None), 2048 * 2048)


def test_img2img_prompt_is_bounded_too():
    request = Img2ImgRequest.parse({**BASE, "prompt": "q" * 101, "init_images": [tiny_png()],
                                    "denoising_strength": 0.5})
    with pytest.raises(RequestError, match=r"^prompt: is 101 characters"):
        to_img2img_plan(request, SETTINGS)


def tiny_png() -> str:
    from PIL import Image

    from engine.imaging.png import png_base64

    return png_base64(Image.new("RGB", (64, 64), (9, 9, 9)), None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mask_blur": 65}, r"^mask_blur: must be an integer from 0 to 64, got 65"),
        ({"mask_blur_x": 1000}, r"^mask_blur_x: must be an integer from 0 to 64, got 1000"),
    ],
)
def test_img2img_mask_blur_is_bounded(fields, message):
    request = Img2ImgRequest.parse({**BASE, "init_images": [tiny_png()], "denoising_strength": 0.5, **fields})
    with pytest.raises(RequestError, match=message):
        to_img2img_plan(request, SETTINGS)


@pytest.mark.parametrize(
    ("unit", "message"),
    [
        ({"ad_mask_blur": 5000}, r"\.ad_mask_blur: must be an integer from 0 to 64, got 5000"),
        ({"ad_dilate_erode": -20000}, r"\.ad_dilate_erode: must be an integer from -128 to 128, got -20000"),
    ],
)
def test_adetailer_mask_kernels_are_bounded(unit, message):
    with pytest.raises(RequestError, match=message):
        plan(alwayson_scripts=adetailer(**unit))
