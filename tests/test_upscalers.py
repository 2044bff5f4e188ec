"""Upscalers: A1111's tile grid, latent modes, PIL upscalers, spandrel ESRGAN models, names, extras endpoint."""

import base64
import io

import numpy as np
import pytest
import spandrel
import torch
from PIL import Image, PngImagePlugin

from engine.errors import NotFoundError, RequestError, UnsupportedError
from engine.resources.catalog import ModelCatalog
from engine.upscale.demo import tiny_rrdbnet, write_tiny_esrgan
from engine.upscale.esrgan import ModelUpscaler, Tiling, run_model, upscale_with_model
from engine.upscale.extras import extra_single_image
from engine.upscale.grid import blend_ramp, combine_grid, split_grid, tile_origins, transform_tiles
from engine.upscale.latent import LATENT_UPSCALERS, LatentUpscaler, latent_upscale_mode_list
from engine.upscale.pixel import NoUpscaler
from engine.upscale.registry import Upscalers


# A1111 v1.10 `shared.latent_upscale_modes`, typed from its source: name → (interpolate mode, antialias).
A1111_LATENT_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# Key names in the real RealESRGAN_x4plus.pth release (basicsr RRDBNet, under "params_ema").
REAL_ESRGAN_KEYS = ("conv_first.weight", "body.0.rdb1.conv1.weight", "body.0.rdb3.conv5.bias", "conv_body.weight",
                    "conv_up1.weight", "conv_up2.weight", "conv_hr.weight", "conv_last.bias")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    root = tmp_path_factory.mktemp("models")
    write_tiny_esrgan(root)
    return root


@pytest.fixture(scope="module")
def upscalers(models_dir):
    return Upscalers(ModelCatalog(models_dir), device="cpu", dtype=torch.float32)


def noise_image(width, height, seed=0, mode="RGB"):
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode)


# --- the tile grid ------------------------------------------------------------------------------------------


def test_grid_worked_example_matches_a1111_split_grid():
    # A 400x300 image, 192-px tiles, 8-px overlap. By hand with A1111's formulas:
    # cols = ceil((400-8)/(192-8)) = 3, dx = (400-192)/2 = 104 → x = 0, 104, 208 (208+192 = 400: flush right);
    # rows = ceil((300-8)/184) = 2,    dy = (300-192)/1 = 108 → y = 0, 108.
    assert tile_origins(400, 192, 8) == [0, 104, 208]
    assert tile_origins(300, 192, 8) == [0, 108]
    grid = split_grid(noise_image(400, 300), 192, 192, 8)
    assert [[(tile.x, tile.y) for tile in row] for row in grid.rows] == [
        [(0, 0), (104, 0), (208, 0)],
        [(0, 108), (104, 108), (208, 108)],
    ]
    assert all(tile.image.size == (192, 192) for row in grid.rows for tile in row)
    # Neighbours share 192-104 = 88 columns and 192-108 = 84 rows, more than the 8-px minimum.
    # Blend weights across the first 8 shared pixels: int(r * 255 / 8) for r = 0..7.
    assert blend_ramp(8).tolist() == [0, 31, 63, 95, 127, 159, 191, 223]
    # After a 4x model the grid's overlap is 32 px: int(r * 255 / 32).
    assert blend_ramp(32).tolist()[:5] == [0, 7, 15, 23, 31] and blend_ramp(32).tolist()[-1] == 247


def test_image_smaller_than_a_tile_is_padded_black_like_a1111():
    # 64 < 192: one tile at 64-192 = -128; PIL fills the part outside the image with black.
    assert tile_origins(64, 192, 8) == [-128]
    image = noise_image(64, 48)
    grid = split_grid(image, 192, 192, 8)
    tile = grid.rows[0][0]
    assert (tile.x, tile.y) == (-128, -144)
    pixels = np.asarray(tile.image)
    assert not pixels[:128].any() and not pixels[:, :128].any()
    assert np.array_equal(pixels[144:, 128:], np.asarray(image))


@pytest.mark.parametrize("size", [(400, 300), (376, 192), (64, 48), (1000, 190)])
def test_split_then_combine_reconstructs_the_image(size):
    image = noise_image(*size)
    assert np.array_equal(np.asarray(combine_grid(split_grid(image, 192, 192, 8))), np.asarray(image))


def test_combine_after_a_2x_transform_equals_the_whole_image_transformed():
    image = noise_image(400, 300)

    def double(tile):
        return tile.resize((tile.width * 2, tile.height * 2), Image.Resampling.NEAREST)

    scaled = transform_tiles(split_grid(image, 192, 192, 8), double)
    assert (scaled.tile_width, scaled.overlap, scaled.width) == (384, 16, 800)
    assert [tile.x for tile in scaled.rows[0]] == [0, 208, 416]
    assert np.array_equal(np.asarray(combine_grid(scaled)), np.asarray(double(image)))


def test_seams_blend_with_a1111_weights():
    # Two tiles side by side (376 = 2*192 - 8) and two rows (376 too); each tile painted one grey level.
    levels = {(0, 0): 200, (184, 0): 40, (0, 184): 120, (184, 184): 10}
    grid = split_grid(noise_image(376, 376), 192, 192, 8)
    painted = combine_grid(transform_tiles(grid, _painter(grid, levels)))
    pixels = np.asarray(painted)[..., 0].astype(int)
    ramp = blend_ramp(8).astype(int)
    # Top row strip: tile 2 blends over tile 1 across x = 184..191: (new*m + old*(255-m)) / 255.
    for r in range(8):
        expected = (40 * ramp[r] + 200 * (255 - ramp[r])) / 255
        assert abs(pixels[50, 184 + r] - expected) <= 1
    assert pixels[50, 183] == 200 and pixels[50, 192] == 40
    # The second row strip blends over the first across y = 184..191, column by column.
    for r in range(8):
        expected = (120 * ramp[r] + 200 * (255 - ramp[r])) / 255
        assert abs(pixels[184 + r, 50] - expected) <= 1
    assert pixels[183, 50] == 200 and pixels[192, 50] == 120 and pixels[300, 300] == 10


def _painter(grid, levels):
    positions = iter([(tile.x, tile.y) for row in grid.rows for tile in row])
    return lambda tile: Image.new("RGB", tile.size, (levels[next(positions)],) * 3)


# --- latent and PIL upscalers -------------------------------------------------------------------------------


def test_latent_modes_are_a1111s_table_in_order():
    assert {name: (u.mode, u.antialias) for name, u in LATENT_UPSCALERS.items()} == A1111_LATENT_MODES
    assert latent_upscale_mode_list() == [{"name": name} for name in A1111_LATENT_MODES]


@pytest.mark.parametrize("name", list(A1111_LATENT_MODES))
def test_every_latent_mode_gives_the_target_latent_size(upscalers, name):
    upscaler = upscalers.get(name)
    assert isinstance(upscaler, LatentUpscaler) and upscaler.kind == "latent"
    latents = torch.randn(2, 4, 120, 160)  # a 1280x960 first pass, to 1.6x
    upscaled = upscaler.upscale_latents(latents, width=2048, height=1536)
    assert upscaled.shape == (2, 4, 192, 256) and upscaled.dtype == latents.dtype
    constant = upscaler.upscale_latents(torch.full((1, 4, 8, 8), 0.5), width=128, height=96)
    assert torch.allclose(constant, torch.full((1, 4, 12, 16), 0.5))


def test_nearest_latent_mode_repeats_pixels():
    latents = torch.randn(1, 4, 6, 5)
    upscaled = LATENT_UPSCALERS["Latent (nearest)"].upscale_latents(latents, width=80, height=96)
    assert torch.equal(upscaled, latents.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


@pytest.mark.parametrize("name", ["None", "Lanczos", "Nearest"])
def test_pil_upscalers_resize_to_the_exact_size(upscalers, name):
    upscaler = upscalers.get(name)
    assert upscaler.kind == "pixel"
    assert upscaler.resize(noise_image(100, 75), 203, 150).size == (203, 150)
    # A1111 `Upscaler.upscale`: the result is rounded down to multiples of 8 (150 → 144, 112.5 → 112).
    assert upscaler.upscale(noise_image(100, 75), 1.5).size == (144, 112)


def test_nearest_upscaler_matches_pil_nearest(upscalers):
    image = noise_image(64, 48)
    expected = image.resize((128, 96), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(upscalers.get("Nearest").resize(image, 128, 96)), np.asarray(expected))


def test_none_upscaler_is_one_lanczos_resize():
    image = noise_image(100, 75)
    expected = image.resize((203, 150), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(NoUpscaler().resize(image, 203, 150)), np.asarray(expected))


# --- ESRGAN models through spandrel ---------------------------------------------------------------------------


def test_demo_file_has_real_esrgans_layout_and_loads_bit_exact(models_dir):
    state = torch.load(models_dir / "RealESRGAN" / "RealESRGAN_x4plus.pth", weights_only=True)
    assert set(state) == {"params_ema"} and set(REAL_ESRGAN_KEYS) <= set(state["params_ema"])
    descriptor = spandrel.ModelLoader().load_from_file(models_dir / "RealESRGAN" / "RealESRGAN_x4plus.pth")
    assert descriptor.architecture.id == "ESRGAN" and descriptor.scale == 4
    expected = tiny_rrdbnet(seed=0).state_dict()
    loaded = descriptor.model.state_dict()
    assert set(loaded) == set(expected) and all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_model_sees_bgr_and_output_is_rounded(upscalers):
    upscaler = upscalers.get("R-ESRGAN 4x+")
    model = upscalers.models.get(upscaler.path, upscaler.prefer_half)
    image = noise_image(20, 12)
    # Reference: the raw RRDBNet on the BGR [0, 1] tensor, clamped, x255, rounded, back to RGB.
    bgr = torch.from_numpy(np.asarray(image)[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        raw = tiny_rrdbnet(seed=0)(bgr)[0].clamp(0, 1).permute(1, 2, 0).numpy()
    expected = np.round(raw * 255).astype(np.uint8)[:, :, ::-1]
    got = np.asarray(run_model(model, image)).astype(int)
    assert got.shape == (48, 80, 3)
    assert np.abs(got - expected).max() <= 1 and np.mean(got == expected) > 0.999


def test_model_tiles_follow_the_grid(upscalers):
    upscaler = upscalers.get("R-ESRGAN 4x+")
    model = upscalers.models.get(upscaler.path, upscaler.prefer_half)
    image = noise_image(120, 100)
    tiled = np.asarray(upscale_with_model(model, image, Tiling(size=64, overlap=8)))
    assert tiled.shape == (400, 480, 3)
    # x = 0, 56; y = 0, 36. Pixels only tile (0, 0) covers come from that tile alone.
    assert tile_origins(120, 64, 8) == [0, 56] and tile_origins(100, 64, 8) == [0, 36]
    first_tile = np.asarray(run_model(model, image.crop((0, 0, 64, 64))))
    assert np.array_equal(tiled[: 36 * 4, : 56 * 4], first_tile[: 36 * 4, : 56 * 4])
    # ...and differ from a whole-image pass near tile borders (why A1111's tiling is reproduced).
    whole = np.asarray(upscale_with_model(model, image, Tiling(size=0)))
    assert not np.array_equal(tiled, whole)


def test_hires_960x1280_with_a_4x_model_gives_exactly_1536x2048(upscalers):
    upscaler = upscalers.get("R-ESRGAN 4x+", field="hr_upscaler")
    assert isinstance(upscaler, ModelUpscaler) and upscaler.path.name == "RealESRGAN_x4plus.pth"
    result = upscaler.resize(noise_image(960, 1280), 1536, 2048)
    assert result.size == (1536, 2048) and result.mode == "RGB"


def test_loaded_models_are_cached(upscalers):
    upscaler = upscalers.get("ESRGAN_4x")
    assert upscalers.models.get(upscaler.path, False) is upscalers.models.get(upscaler.path, False)


# --- names and listings ---------------------------------------------------------------------------------------


def test_names_resolve_as_a1111_names_them(upscalers):
    assert upscalers.get("R-ESRGAN 4x+").family == "realesrgan"
    assert upscalers.get("ESRGAN_4x").family == "esrgan"  # ESRGAN/ files go by their stem
    assert upscalers.names() == [*A1111_LATENT_MODES, "None", "Lanczos", "Nearest", "ESRGAN_4x", "R-ESRGAN 4x+"]


def test_unknown_upscaler_lists_the_valid_names(upscalers):
    with pytest.raises(NotFoundError) as error:
        upscalers.get("4x-UltraSharp")
    message = str(error.value)
    assert error.value.field == "hr_upscaler"
    assert all(repr(name) in message for name in ["Latent (bicubic)", "Lanczos", "R-ESRGAN 4x+", "ESRGAN_4x"])


def test_known_realesrgan_name_without_its_file_says_which_file(upscalers):
    with pytest.raises(NotFoundError, match=r"RealESRGAN_x4plus_anime_6B\.pth"):
        upscalers.get("R-ESRGAN 4x+ Anime6B")


def test_model_copied_in_later_is_found(models_dir, upscalers):
    target = models_dir / "ESRGAN" / "4x-UltraSharp.pth"
    target.write_bytes((models_dir / "ESRGAN" / "ESRGAN_4x.pth").read_bytes())
    try:
        assert upscalers.get("4x-UltraSharp").path == target
    finally:
        target.unlink()
        upscalers.catalog.refresh("esrgan")


def test_upscalers_listing_has_a1111s_shape_and_order(upscalers, models_dir):
    listing = upscalers.listing()
    assert [entry["name"] for entry in listing] == ["None", "Lanczos", "Nearest", "ESRGAN_4x", "R-ESRGAN 4x+"]
    assert all(set(entry) == {"name", "model_name", "model_path", "model_url", "scale"} for entry in listing)
    assert listing[0] == {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}
    assert listing[3]["model_name"] == "ESRGAN_4x"
    assert listing[4]["model_path"] == str(models_dir / "RealESRGAN" / "RealESRGAN_x4plus.pth")
    realesrgan = {entry["name"]: entry for entry in upscalers.realesrgan_listing()}
    assert realesrgan["R-ESRGAN 2x+"] == {"name": "R-ESRGAN 2x+", "path": None, "scale": 2}


# --- /sdapi/v1/extra-single-image -----------------------------------------------------------------------------


def _b64_png(image, parameters=None):
    metadata = PngImagePlugin.PngInfo()
    if parameters:
        metadata.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=metadata)
    return base64.b64encode(buffer.getvalue()).decode()


def _open(response):
    return Image.open(io.BytesIO(base64.b64decode(response["image"])))


def test_extras_upscales_by_a_factor_with_a_model(upscalers):
    payload = {"image": _b64_png(noise_image(40, 30), "a prompt"), "upscaler_1": "R-ESRGAN 4x+", "upscaling_resize": 2}
    response = extra_single_image(payload, upscalers)
    result = _open(response)
    # int(40*2)//8*8 = 80, int(30*2)//8*8 = 56: A1111 rounds the extras result down to multiples of 8.
    assert result.size == (80, 56)
    assert response["html_info"] == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: R-ESRGAN 4x+</p>"
    assert result.info["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: R-ESRGAN 4x+"
    assert result.info["parameters"] == "a prompt"


def test_extras_to_a_size_with_crop_and_a_second_upscaler(upscalers):
    payload = {"image": "data:image/png;base64," + _b64_png(noise_image(40, 30)), "resize_mode": 1,
               "upscaling_resize_w": 100, "upscaling_resize_h": 60, "upscaler_1": "Lanczos",
               "upscaler_2": "Nearest", "extras_upscaler_2_visibility": 0.5}
    response = extra_single_image(payload, upscalers)
    assert _open(response).size == (100, 60)
    assert response["html_info"] == ("<p>Postprocess upscale to: 100x60, Postprocess crop to: 100x60, "
                                     "Postprocess upscaler: Lanczos, Postprocess upscaler 2: Nearest</p>")


def test_extras_with_no_upscaler_returns_the_image(upscalers):
    image = noise_image(40, 30)
    response = extra_single_image({"image": _b64_png(image)}, upscalers)
    assert np.array_equal(np.asarray(_open(response)), np.asarray(image))


@pytest.mark.parametrize(("payload", "error", "field"), [
    ({"gfpgan_visibility": 0.5}, UnsupportedError, "gfpgan_visibility"),
    ({"codeformer_visibility": 1}, UnsupportedError, "codeformer_visibility"),
    ({"upscaler_1": "Latent"}, RequestError, "upscaler_1"),
    ({"upscaler_1": "Lanczos", "upscaler_2": "nope"}, NotFoundError, "upscaler_2"),
    ({"upscaler_1": "Lanczos", "upscaling_resize": 100}, RequestError, "upscaling_resize"),
    ({"image": "not an image"}, RequestError, "image"),
    ({"image": "https://example.com/a.png"}, UnsupportedError, "image"),
    ({"resize_mode": 2}, RequestError, "resize_mode"),
])
def test_extras_errors_name_the_field(upscalers, payload, error, field):
    with pytest.raises(error) as raised:
        extra_single_image({"image": _b64_png(noise_image(40, 30)), **payload}, upscalers, max_pixels=2048 * 2048)
    assert raised.value.field == field
