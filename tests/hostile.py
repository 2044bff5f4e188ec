"""Hostile inputs for the fuzz harnesses (tests/test_fuzz.py, bench/fuzz.py): images a client can send that a
decoder must refuse or survive, and the tiny valid payloads the mutations start from.

Pure PIL/zlib: images are built in code (no fixture files), so every case is reproducible from its seed.
"""

import base64
import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image

from tests.seeds import seed_payload


def encode(image: Image.Image, format: str = "PNG", **save) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **save)
    return base64.b64encode(buffer.getvalue()).decode()


def noise_image(size=(64, 64), mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


def face_photo(size: int = 64) -> Image.Image:
    """A white block on black: the tiny detectors (YOLO, SCRFD-shaped) score white cells as faces."""
    array = np.zeros((size, size, 3), np.uint8)
    array[16:32, 16:32] = 255
    return Image.fromarray(array)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_header(width: int, height: int, rows: bytes = b"", bit_depth: int = 8, colour: int = 2) -> bytes:
    """A PNG whose IHDR claims `width`×`height` while its IDAT holds only `rows` (compressed): the header of a
    decompression bomb without the gigabytes, so a decoder that trusts the header allocates for nothing."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def zero_bomb(width: int, height: int) -> bytes:
    """A complete greyscale PNG of zeros: ~1000:1 compression, so a few KiB decode to `width`×`height` bytes."""
    row = b"\x00" * (width + 1)  # filter byte + pixels
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@functools.cache
def hostile_images() -> dict[str, str]:
    """Name → what a client might put in an image field: bombs, truncations, every PIL mode a PNG/JPEG/TIFF
    can carry, sizes that are not the request's, and strings that are not images at all."""
    rgb = noise_image()
    png = base64.b64decode(encode(rgb))
    jpeg = base64.b64decode(encode(rgb, "JPEG"))
    sixteen = Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    return {
        "bomb header 60000x60000": b64(png_with_header(60000, 60000)),
        "bomb header 2^31-1 wide": b64(png_with_header(2**31 - 1, 1)),
        "bomb zeros 6000x6000": b64(zero_bomb(6000, 6000)),
        "header 9000x9000 with no data": b64(png_with_header(9000, 9000)),
        "header 1x1 but no data": b64(png_with_header(1, 1)),
        "zero-size header": b64(png_with_header(0, 0)),
        "truncated PNG": b64(png[: len(png) // 2]),
        "truncated JPEG": b64(jpeg[: len(jpeg) // 3]),
        "PNG signature only": b64(png[:8]),
        "corrupt IDAT": b64(png[:60] + bytes(200) + png[260:]),
        "CMYK JPEG": encode(rgb.convert("CMYK"), "JPEG"),
        "CMYK TIFF": encode(rgb.convert("CMYK"), "TIFF"),
        "16-bit greyscale PNG": encode(sixteen),
        "32-bit float TIFF": encode(rgb.convert("F"), "TIFF"),
        "palette PNG": encode(rgb.convert("P")),
        "palette PNG with transparency": encode(rgb.convert("P"), transparency=0),
        "RGBA PNG": encode(noise_image(mode="RGBA")),
        "LA PNG": encode(noise_image(mode="LA")),
        "1-bit PNG": encode(rgb.convert("1")),
        "greyscale JPEG": encode(rgb.convert("L"), "JPEG"),
        "GIF": encode(rgb.convert("P"), "GIF"),
        "WEBP": encode(rgb, "WEBP"),
        "BMP": encode(rgb, "BMP"),
        "1x1 PNG": encode(Image.new("RGB", (1, 1))),
        "1x4000 PNG": encode(Image.new("RGB", (1, 4000))),
        "odd 37x53 PNG": encode(noise_image((37, 53))),
        "data URI": "data:image/png;base64," + encode(rgb),
        "data URI without base64": "data:image/png," + encode(rgb),
        "not base64": "this is not base64 !!!",
        "base64 of text": b64(b"hello, world"),
        "empty": "",
        "padding only": "====",
        "base64 of an SVG": b64(b'<svg xmlns="http://www.w3.org/2000/svg" width="9e9" height="9e9"/>'),
    }


@functools.cache
def masks() -> dict[str, str]:
    """Masks whose size or mode differ from the 64×64 init image."""
    return {
        "mask 32x32": encode(Image.new("L", (32, 32), 255)),
        "mask 200x100": encode(Image.new("L", (200, 100), 255)),
        "mask RGBA": encode(Image.new("RGBA", (64, 64), (255, 255, 255, 0))),
        "mask all black": encode(Image.new("L", (64, 64), 0)),
        "mask 16-bit": encode(Image.fromarray(np.full((64, 64), 65535, np.uint16))),
        "mask 1x1": encode(Image.new("L", (1, 1), 255)),
    }


# --- the valid payloads mutations start from: tiny sizes, 1-2 steps ------------------------------------------------

TINY = {"prompt": "a red fox", "seed": 5, "steps": 1, "width": 64, "height": 64, "sampler_name": "Euler"}


def box_mask(size: int = 64) -> str:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (16, 16, 48, 48))
    return encode(mask)


def adetailer_unit(**fields) -> dict:
    return {"ad_model": "face_yolov8n.pt", "ad_confidence": 0.01, "ad_steps": 1, "ad_use_steps": True,
            "ad_mask_k_largest": 1, **fields}


def controlnet_unit(**fields) -> dict:
    return {"image": encode(face_photo()), "module": "canny", "model": "control_v11p_sd15_canny",
            "weight": 1.0, "processor_res": 64, **fields}


def seed_000() -> dict:
    """Seed 000 (SD1.5 + ADetailer), shrunk to 64×64 and one step everywhere."""
    payload = seed_payload("000_343685f6abe1ed79.txt")
    payload.update(width=64, height=64, steps=1, seed=11)
    payload["alwayson_scripts"]["ADetailer"]["args"][2].update(ad_steps=1, ad_confidence=0.01)
    return payload


def seed_002() -> dict:
    """Seed 002 (SDXL + InstantID + hires fix with R-ESRGAN), on tiny-sdxl at 64×64, one step per pass."""
    payload = seed_payload("002_645e89f4f859427c.txt")
    payload["override_settings"]["sd_model_checkpoint"] = "tiny-sdxl"
    payload.update(width=64, height=64, steps=1, seed=7, hr_scale=1.25)
    for unit in payload["alwayson_scripts"]["controlnet"]["args"]:
        unit.update(image=encode(face_photo(128)), processor_res=128)
    return payload


@functools.cache
def base_calls() -> dict[str, tuple[str, dict]]:
    """Name → (endpoint, payload): one small valid call per door feature the fuzzers mutate (shared: callers
    deep-copy what they change)."""
    init = encode(noise_image())
    return {
        "txt2img": ("/sdapi/v1/txt2img", dict(TINY)),
        "txt2img sdxl": ("/sdapi/v1/txt2img", {**TINY, "override_settings": {"sd_model_checkpoint": "tiny-sdxl"}}),
        "txt2img lora + hires": (
            "/sdapi/v1/txt2img",
            {**TINY, "prompt": "a fox <lora:tiny-sd15-style:0.8>", "enable_hr": True, "hr_scale": 1.5,
             "hr_upscaler": "Latent", "denoising_strength": 0.5, "hr_second_pass_steps": 1},
        ),
        "img2img": ("/sdapi/v1/img2img", {**TINY, "init_images": [init], "denoising_strength": 0.6}),
        "inpaint": ("/sdapi/v1/img2img", {**TINY, "init_images": [init], "mask": box_mask(),
                                          "denoising_strength": 0.6, "inpainting_fill": 1}),
        "adetailer": ("/sdapi/v1/txt2img", {**TINY, "alwayson_scripts": {"ADetailer": {"args": [adetailer_unit()]}}}),
        "controlnet": ("/sdapi/v1/txt2img", {**TINY, "alwayson_scripts": {"controlnet": {"args": [controlnet_unit()]}}}),
        "seed 000": ("/sdapi/v1/txt2img", seed_000()),
        "seed 002": ("/sdapi/v1/txt2img", seed_002()),
        "extras": ("/sdapi/v1/extra-single-image", {"image": init, "upscaling_resize": 1.5,
                                                     "upscaler_1": "Lanczos"}),
        "png-info": ("/sdapi/v1/png-info", {"image": init}),
        "controlnet detect": ("/controlnet/detect", {"controlnet_module": "canny", "controlnet_input_images": [init],
                                                     "controlnet_processor_res": 64}),
    }
