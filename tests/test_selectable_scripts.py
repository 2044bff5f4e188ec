"""A1111's selectable scripts run on the tiny SD1.5 model through the engine's own generation call: the images,
infotexts and work each returns, as A1111's scripts return them."""

import json

import numpy as np
import pytest
from PIL import Image

from engine.imaging.decode import decode_image
from engine.imaging.grid import image_grid
from engine.imaging.png import png_base64


SMALL = {"prompt": "a red fox", "seed": 11, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler"}


def images_of(body) -> list[Image.Image]:
    return [decode_image(text)[0] for text in body["images"]]


def xyz_args(x_type, x_values, y_type=0, y_values="", legend=False, lone=True, vary_x=False):
    return [x_type, x_values, [], y_type, y_values, [], 0, "", [], legend, lone, False, False, vary_x, False,
            False, 0, False]


@pytest.fixture(scope="module")
def init_image() -> str:
    gradient = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    return png_base64(Image.fromarray(gradient), None)


def test_xyz_plot_cells_are_the_plain_generations(sd15_engine):
    body = sd15_engine.handle("POST", "sdapi/v1/txt2img", {**SMALL, "script_name": "X/Y/Z plot",
                                                           "script_args": xyz_args(1, "5, 6")})
    grid, *cells = images_of(body)
    plain = [images_of(sd15_engine.handle("POST", "sdapi/v1/txt2img", {**SMALL, "seed": seed}))[0] for seed in (5, 6)]
    assert [cell.tobytes() for cell in cells] == [image.tobytes() for image in plain]
    # Without a legend the grid is the cells side by side.
    assert grid.tobytes() == image_grid(plain, rows=1).tobytes()
    info = json.loads(body["info"])
    assert info["index_of_first_image"] == 1 and info["all_seeds"] == [5, 6]
    assert len(info["infotexts"]) == 3
    assert "Script: X/Y/Z plot, X Type: Seed, X Values: \"5, 6\", Fixed X Values: \"5, 6\"" in info["infotexts"][0]
    assert body["parameters"]["script_name"] == "X/Y/Z plot"


def test_xyz_plot_default_returns_the_grid_only_with_its_legend(sd15_engine):
    args = xyz_args("Steps", "1-2", y_type="CFG Scale", y_values="4, 6", legend=True, lone=False)
    progress = []
    body = sd15_engine.handle("POST", "sdapi/v1/txt2img", {**SMALL, "script_name": "x/y/z plot",
                                                           "script_args": args}, on_progress=progress.append)
    (grid,) = images_of(body)
    assert grid.width == 2 * 64 + 64 * 3 // 4 and grid.height > 2 * 64  # row labels on the left, a top band
    info = json.loads(body["info"])
    assert info["all_seeds"] == [11, 11, 11, 11]  # one fixed seed for the grid
    assert "X Type: Steps, X Values: 1-2, Y Type: CFG Scale, Y Values: \"4, 6\"" in info["infotexts"][0]
    assert len(progress) == 1 + 2 + 1 + 2  # every cell's sampling steps were reported


def test_prompt_matrix(sd15_engine):
    payload = {**SMALL, "prompt": "a fox|snow|night", "batch_size": 3, "script_name": "Prompt matrix",
               "script_args": [False, False, "positive", "comma", 0]}
    body = sd15_engine.handle("POST", "sdapi/v1/txt2img", payload)
    grid, *images = images_of(body)
    info = json.loads(body["info"])
    assert len(images) == 4 and info["index_of_first_image"] == 1
    assert info["all_prompts"] == ["a fox", "a fox, snow", "a fox, night", "a fox, snow, night"]
    assert info["all_seeds"] == [11, 11, 11, 11]  # one seed for all unless "different seeds"
    assert grid.width > 128 and grid.height > 128  # 2 × 2 cells plus the labels


def test_prompts_from_file(sd15_engine):
    lines = "a cat\n--prompt a dog --steps 1 --seed 3"
    payload = {**SMALL, "prompt": "", "script_name": "prompts from file or textbox",
               "script_args": [True, False, "start", lines]}
    body = sd15_engine.handle("POST", "sdapi/v1/txt2img", payload)
    info = json.loads(body["info"])
    assert len(body["images"]) == 2
    assert info["all_prompts"] == ["a cat", "a dog"] and info["all_seeds"] == [11, 3]
    assert "Steps: 1," in info["infotexts"][1]


def test_sd_upscale_redraws_tiles(sd15_engine, init_image):
    payload = {**SMALL, "init_images": [init_image], "denoising_strength": 0.5, "batch_size": 4,
               "script_name": "SD upscale", "script_args": ["", 0, "Lanczos", 2.0]}
    body = sd15_engine.img2img(payload).response()
    (upscaled,) = images_of(body)
    assert upscaled.size == (128, 128)
    info = json.loads(body["info"])
    assert "SD upscale overlap: 0, SD upscale upscaler: Lanczos" in info["infotexts"][0]


def test_sd_upscale_work_is_tiles_times_steps(sd15_engine, init_image):
    # 2 × 2 tiles in batches of 2 → two generations; img2img at 0.5 × 2 steps runs int(0.5·2) + 1 = 2 steps.
    payload = {**SMALL, "init_images": [init_image], "denoising_strength": 0.5, "batch_size": 2,
               "script_name": "sd upscale", "script_args": [None, 0, 1, 2.0]}
    result = sd15_engine.img2img(payload)
    assert result.unet_calls == 2 * 2
    assert json.loads(result.info)["all_seeds"] == [11]


def test_loopback(sd15_engine, init_image):
    payload = {**SMALL, "init_images": [init_image], "denoising_strength": 0.6, "script_name": "Loopback",
               "script_args": [2, 0.3, "Linear", "None"]}
    body = sd15_engine.handle("POST", "sdapi/v1/img2img", payload)
    grid, first, second = images_of(body)
    assert grid.size == (128, 64)
    info = json.loads(body["info"])
    assert info["all_seeds"] == [11, 12]
    assert "Denoising strength: 0.6" in info["infotexts"][1] and "Denoising strength: 0.3" in info["infotexts"][2]
    assert "Final denoising strength: 0.3, Denoising curve: Linear" in info["infotexts"][1]


def test_outpainting_mk2_grows_the_canvas(sd15_engine, init_image):
    payload = {**SMALL, "init_images": [init_image], "denoising_strength": 0.8, "script_name": "Outpainting mk2",
               "script_args": ["", 32, 4, ["left"], 1.0, 0.05]}
    result = sd15_engine.img2img(payload)
    (image,) = result.images
    assert image.size == (128, 64)  # 64 + 32 rounded up to 128, all of it on the left
    original = decode_image(init_image)[0]
    # The right 32 columns were outside the repaint and the latent masks: the original survives there.
    difference = np.abs(np.asarray(image, dtype=int)[:, -16:] - np.asarray(original, dtype=int)[:, -16:])
    assert difference.mean() < 12


def test_poor_mans_outpainting(sd15_engine, init_image):
    payload = {**SMALL, "init_images": [init_image], "denoising_strength": 0.8,
               "script_name": "Poor man's outpainting", "script_args": [32, 4, "original", ["up"]]}
    result = sd15_engine.img2img(payload)
    (image,) = result.images
    assert image.size == (64, 128)
    # Tiles of 64 overlapping by 32 on a 64 × 128 canvas: rows at y = 0, 32, 64; the last lies inside the
    # original, so two tiles are redrawn, one generation each of int(0.8 · 2) + 1 = 2 steps.
    assert result.unet_calls == 2 * 2
    assert json.loads(result.info)["all_seeds"] == [11]  # the seed of the returned image


def test_tiled_vae_uses_a_view_and_leaves_the_shared_pipeline_alone(sd15_engine):
    entry = sd15_engine.resolve_checkpoint(None)
    shared = sd15_engine._pipelines.get(entry)
    before = shared.vae_tiling
    tiled = {**SMALL, "alwayson_scripts": {"Tiled VAE": {"args": [True, 1024, 16, True, False, False, False]}}}
    result = sd15_engine.txt2img(tiled)
    assert shared.vae_tiling is before
    plain = sd15_engine.txt2img(SMALL)
    # One 128-pixel tile covers the 64-pixel image: the same pixels as without tiling.
    assert result.images[0].tobytes() == plain.images[0].tobytes()
    assert any("Tiled VAE" in warning for warning in result.warnings)


@pytest.mark.parametrize(
    ("endpoint", "payload", "message"),
    [
        ("txt2img", {"script_name": "SD upscale"}, "Script 'SD upscale' not found"),
        ("txt2img", {"script_name": "x/y/z plot", "script_args": [99, "1"]}, "axis index or name"),
        ("txt2img", {"script_name": "x/y/z plot", "script_args": ["Prompt S/R", "green, blue"]},
         "Prompt S/R did not find green"),
        ("txt2img", {"script_name": "loopback"}, "Script 'loopback' not found"),
    ],
)
def test_script_errors_come_before_any_work(sd15_engine, endpoint, payload, message):
    from engine.errors import RequestError

    calls = []
    with pytest.raises(RequestError, match=message):
        sd15_engine.handle("POST", f"sdapi/v1/{endpoint}", {**SMALL, **payload}, on_progress=calls.append)
    assert calls == []


def test_an_interrupt_ends_the_script_with_the_images_made_so_far(sd15_engine):
    progress = []

    def interrupt_in_the_second_cell(report) -> None:
        progress.append(report)
        if len(progress) == 3:  # the second cell's first step (2 steps per cell)
            sd15_engine.jobs.interrupt()

    payload = {**SMALL, "script_name": "X/Y/Z plot", "script_args": xyz_args(1, "1, 2, 3")}
    result = sd15_engine.txt2img(payload, on_progress=interrupt_in_the_second_cell)
    # A1111's scripts stop at `state.interrupted`: no third cell, no grid; the two cells made are returned.
    assert len(result.images) == 2 and json.loads(result.info)["all_seeds"] == [1, 2]
    assert result.warnings[0].startswith("X/Y/Z plot stopped after 2 of its generations")
    assert len(progress) == 3
