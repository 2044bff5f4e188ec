"""Client images: one decoder for every field, bounded (base64 length, header pixels, images per field) before
any pixel is decoded; hostile files (bombs, truncated, CMYK, 16-bit, palette, LA) built here, in code."""

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.errors import RequestError
from engine.imaging.decode import decode_image, open_image
from engine.imaging.limits import ImageLimits, parse_image_limits
from engine.settings import Settings


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return b64(buffer.getvalue())


def png_header_only(width: int, height: int) -> str:
    """A PNG whose IHDR claims width × height RGB pixels, with one tiny IDAT: a few dozen bytes that
    would decode to gigabytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b64(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
               + chunk(b"IEND", b""))


def noise(width=32, height=24, mode="RGB") -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).convert(mode)


# --- limits, each naming the field and the limit ----------------------------------------------------------

@pytest.mark.parametrize(("width", "height"), [(9400, 9400), (100_000, 100_000)])
def test_a_bomb_is_refused_from_its_header_naming_field_and_limit(width, height):
    # 9400² is under Pillow's own bomb error (it only warns); 100000² is over it (DecompressionBombError).
    with pytest.raises(RequestError) as caught:
        open_image(png_header_only(width, height), "init_images[1]")
    message = str(caught.value)
    assert message.startswith("init_images[1]: ")
    assert str(ImageLimits().pixels) in message


def test_pixel_limit_is_checked_before_decoding():
    # The header says 4000x4000 but the data is 64 zero bytes: decoding would fail as truncated. The pixel
    # limit must answer first, so no decoding was attempted.
    with pytest.raises(RequestError, match=r"mask: is 4000x4000 = 16000000 pixels; at most 1000000"):
        open_image(png_header_only(4000, 4000), "mask", ImageLimits(pixels=1_000_000))


def test_base64_length_is_bounded_before_decoding():
    text = encoded(noise())
    with pytest.raises(RequestError, match=rf"extras: is {len(text)} base64 characters; at most 100 accepted"):
        open_image(text, "extras", ImageLimits(base64_chars=100))
    # The `data:` prefix does not count.
    assert open_image(f"data:image/png;base64,{text}", "image", ImageLimits(base64_chars=len(text))).size == (32, 24)


def test_truncated_and_non_image_data_are_one_line_naming_the_field():
    whole = base64.b64decode(encoded(noise(64, 64)))
    with pytest.raises(RequestError, match=r"^init_images\[0\]: is a damaged or truncated image"):
        open_image(b64(whole[: len(whole) // 2]), "init_images[0]")
    with pytest.raises(RequestError, match=r"^mask: is not an image in a supported format"):
        open_image(b64(b"%!PS-Adobe-3.0 EPSF-3.0\n"), "mask")  # EPS would run Ghostscript
    with pytest.raises(RequestError, match=r"^image: is not valid base64"):
        open_image("abc", "image")


# --- modes decode to the right RGB ------------------------------------------------------------------------

def test_cmyk_jpeg_decodes_to_its_rgb():
    rgb = Image.new("RGB", (16, 16), (200, 30, 60))
    image, _ = decode_image(encoded(rgb.convert("CMYK"), "JPEG", quality=100))
    assert image.mode == "RGB"
    assert np.abs(np.asarray(image, dtype=int) - (200, 30, 60)).max() <= 3


def test_sixteen_bit_grey_png_is_scaled_not_clipped_to_white():
    values = np.full((8, 8), 0x8040, dtype=np.uint16)
    image, _ = decode_image(encoded(Image.fromarray(values)))
    assert image.mode == "RGB"
    assert np.asarray(image)[0, 0].tolist() == [0x80, 0x80, 0x80]


def test_palette_with_transparency_keeps_its_alpha():
    rgba = Image.new("RGBA", (8, 8), (10, 200, 30, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    image, _ = decode_image(encoded(rgba.convert("P")))
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0))[3] == 0
    assert image.getpixel((5, 5)) == (10, 200, 30, 255)


def test_la_is_its_grey_as_a1111_reads_it():
    # A1111 converts non-RGBA images to RGB (`flatten`), so an LA image is its grey channel.
    la = Image.merge("LA", (Image.new("L", (8, 8), 90), Image.new("L", (8, 8), 0)))
    image, _ = decode_image(encoded(la))
    assert image.mode == "RGB" and image.getpixel((3, 3)) == (90, 90, 90)


# --- every field goes through it, with its own limits -------------------------------------------------------

def img2img_request(**fields):
    from engine.wire.img2img import Img2ImgRequest

    return Img2ImgRequest.parse({"prompt": "x", "width": 64, "height": 64, "steps": 2,
                                 "denoising_strength": 0.5, **fields})


def test_init_image_count_is_checked_before_any_is_decoded():
    from engine.translate import to_img2img_plan

    settings = Settings(image_limit_overrides={"init_images": ImageLimits(images=3)})
    # None of these is an image: the count must be refused first.
    request = img2img_request(init_images=["junk"] * 4, batch_size=4)
    with pytest.raises(RequestError, match=r"^init_images: holds 4 images; at most 3 accepted"):
        to_img2img_plan(request, settings)


def test_limits_are_per_kind_of_field():
    from engine.translate import to_img2img_plan

    settings = Settings(image_limit_overrides={"mask": ImageLimits(pixels=100)})
    image = encoded(noise(64, 64))
    plan = to_img2img_plan(img2img_request(init_images=[image]), settings)
    assert plan.init.images[0].size == (64, 64)
    with pytest.raises(RequestError, match=r"^mask: is 64x64 = 4096 pixels; at most 100 accepted"):
        to_img2img_plan(img2img_request(init_images=[image], mask=image), settings)


def test_controlnet_unit_images_use_the_controlnet_limits():
    from engine.translate import to_plan
    from engine.wire.txt2img import Txt2ImgRequest

    settings = Settings(image_limit_overrides={"controlnet": ImageLimits(pixels=100)})
    unit = {"module": "canny", "model": "canny", "image": encoded(noise(64, 64))}
    request = Txt2ImgRequest.parse({"prompt": "x", "width": 64, "height": 64, "steps": 2,
                                    "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    with pytest.raises(RequestError, match=r"^alwayson_scripts\.controlnet\.args\[0\]\.image: is 64x64"):
        to_plan(request, settings)


def test_image_limits_read_from_the_environment():
    settings = Settings.from_env({"MAX_INPUT_PIXELS": "5000", "IMAGE_LIMITS": "mask:pixels=100,images=2;extras:base64_chars=9"})
    assert settings.limits_for_images("init_images") == ImageLimits(pixels=5000)
    assert settings.limits_for_images("mask") == ImageLimits(pixels=100, images=2)
    assert settings.limits_for_images("extras") == ImageLimits(base64_chars=9, pixels=5000)
    with pytest.raises(ValueError, match="unknown field kind 'masks'"):
        parse_image_limits("masks:pixels=1", ImageLimits())
    with pytest.raises(ValueError, match="must be a positive integer"):
        parse_image_limits("mask:pixels=-1", ImageLimits())


def test_extras_and_png_info_use_their_limits(sd15_engine):
    from dataclasses import replace

    from engine import listings

    settings = replace(sd15_engine.settings, image_limit_overrides={"extras": ImageLimits(pixels=100),
                                                                     "png_info": ImageLimits(pixels=100)})
    engine = type("View", (), {"settings": settings, "upscalers": sd15_engine.upscalers})()
    image = encoded(noise(64, 64))
    with pytest.raises(RequestError, match=r"^image: is 64x64 = 4096 pixels; at most 100"):
        listings.extra_single_image(engine, {"image": image, "upscaling_resize": 1})
    with pytest.raises(RequestError, match=r"^image: is 64x64 = 4096 pixels; at most 100"):
        listings.png_info(engine, {"image": image})


# --- ultralytics' patched Image.open is never used on client data -------------------------------------------

def test_after_an_adetailer_request_a_non_image_is_one_clear_error(sd15_engine, monkeypatch):
    from tests.test_adetailer import SMALL, unit, with_adetailer

    sd15_engine.txt2img(with_adetailer({**SMALL, "steps": 2}, unit()))
    import ultralytics.utils.patches as patches

    assert Image.open is patches.image_open  # the patch is in place, as in production after ADetailer

    def no_install(*args, **kwargs):
        raise AssertionError("tried to install a package for a client image")

    monkeypatch.setattr("ultralytics.utils.checks.check_requirements", no_install)
    unit_args = {"module": "canny", "model": "control_v11p_sd15_canny", "image": b64(b"not an image at all")}
    with pytest.raises(RequestError) as caught:
        sd15_engine.txt2img({**SMALL, "steps": 2, "alwayson_scripts": {"controlnet": {"args": [unit_args]}}})
    assert str(caught.value).startswith("alwayson_scripts.controlnet.args[0].image: is not an image")
    with pytest.raises(RequestError, match=r"^image: is not an image"):
        sd15_engine.handle("POST", "sdapi/v1/png-info", {"image": b64(b"not an image at all")})
    with pytest.raises(RequestError, match=r"^controlnet_input_images\[0\]: is not an image"):
        sd15_engine.handle("POST", "controlnet/detect", {"controlnet_module": "canny",
                                                         "controlnet_input_images": [b64(b"nope")]})


def test_controlnet_unit_count_is_bounded_before_any_unit_is_read():
    from engine.control.units import parse_controlnet_args

    units = [{"module": "canny", "model": "canny", "image": "not an image"}] * 3
    with pytest.raises(RequestError, match=r"^alwayson_scripts\.controlnet\.args: holds 3 units; at most 2"):
        parse_controlnet_args({"controlnet": {"args": units}}, max_units=2)


def test_reactor_images_use_the_reactor_limits():
    from engine.faceswap.api import swap_image

    settings = Settings(image_limit_overrides={"reactor": ImageLimits(pixels=100)})
    engine = type("View", (), {"settings": settings})()
    with pytest.raises(RequestError, match=r"^target_image: is 64x64 = 4096 pixels; at most 100"):
        swap_image(engine, {"target_image": encoded(noise(64, 64)), "source_image": encoded(noise(64, 64))})
