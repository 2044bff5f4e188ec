"""The endpoint table, the listing endpoints, the options store, job progress and the image encoder."""

import base64
import io
import shutil
from types import SimpleNamespace

import pytest
import torch
from PIL import ExifTags, Image
from safetensors.torch import save_file

from engine import listings
from engine.errors import NotFoundError, RequestError
from engine.generate import Progress
from engine.imaging.png import ImageEncoding, encode_base64, encode_image, read_infotext
from engine.options import DEFAULTS, OptionsStore
from engine.resources.catalog import ModelCatalog
from engine.stopping import Deadline, StopSignal
from engine.translate.common import OVERRIDE_SETTINGS
from engine.wire.infotext import parse_infotext
from engine.wire.routes import GENERATION_REQUESTS, ROUTES, JobState, route


# --- the table ---------------------------------------------------------------------------------------------

# Everything the issue asks both doors to serve.
REQUIRED = [
    ("GET", p)
    for p in (
        "sd-models",
        "sd-vae",
        "samplers",
        "schedulers",
        "upscalers",
        "latent-upscale-modes",
        "loras",
        "embeddings",
        "options",
        "memory",
        "prompt-styles",
        "face-restorers",
        "scripts",
        "progress",
    )
] + [
    ("POST", p)
    for p in (
        "txt2img",
        "img2img",
        "options",
        "refresh-checkpoints",
        "refresh-vae",
        "refresh-loras",
        "refresh-embeddings",
        "png-info",
        "extra-single-image",
        "interrupt",
        "skip",
    )
]


@pytest.mark.parametrize(("method", "path"), REQUIRED)
def test_every_required_endpoint_is_routed_to_an_implementation(method, path):
    name = route(method, f"/sdapi/v1/{path}")
    assert name in GENERATION_REQUESTS or callable(getattr(listings, name))


def test_every_route_has_an_implementation():
    names = {name for table in ROUTES.values() for name in table.values()}
    assert all(name in GENERATION_REQUESTS or callable(getattr(listings, name, None)) for name in names)
    assert route("GET", "adetailer/v1/ad_model") == "ad_model"


def test_unknown_endpoint_and_wrong_method_are_one_line_errors():
    with pytest.raises(
        NotFoundError,
        match=r"^endpoint: /sdapi/v1/unknown-thing is not supported; supported: .*"
        r"POST /sdapi/v1/txt2img",
    ):
        route("POST", "/sdapi/v1/unknown-thing")
    with pytest.raises(RequestError, match="^method: /sdapi/v1/txt2img accepts POST, got 'GET'"):
        route("GET", "sdapi/v1/txt2img")


# --- listings ----------------------------------------------------------------------------------------------


@pytest.fixture
def library(demo_models, tmp_path):
    """The demo models plus a VAE, a LoRA with a trained name, and two embeddings (one unreadable)."""
    root = tmp_path / "models"
    shutil.copytree(demo_models / "Stable-diffusion", root / "Stable-diffusion")
    (root / "VAE").mkdir()
    save_file({"decoder.conv_in.weight": torch.zeros(2, 2)}, root / "VAE" / "soft.vae.safetensors")
    (root / "Lora").mkdir()
    save_file(
        {"lora_unet_x.alpha": torch.ones(())},
        root / "Lora" / "ink.safetensors",
        {"ss_output_name": "inkstyle"},
    )
    (root / "embeddings").mkdir()
    save_file({"emb_params": torch.zeros(3, 32)}, root / "embeddings" / "goodword.safetensors")
    (root / "embeddings" / "broken.pt").write_bytes(b"not a pickle")
    return SimpleNamespace(catalog=ModelCatalog(root), root=root)


def test_model_listings_have_a1111_shapes(library):
    assert listings.sd_vae(library, {}) == [
        {"model_name": "soft.vae.safetensors", "filename": str(library.root / "VAE" / "soft.vae.safetensors")}
    ]
    (lora,) = listings.loras(library, {})
    assert (
        lora["name"] == "ink"
        and lora["alias"] == "inkstyle"
        and lora["metadata"] == {"ss_output_name": "inkstyle"}
    )
    assert listings.embeddings(library, {}) == {
        "loaded": {
            "goodword": {
                "step": None,
                "sd_checkpoint": None,
                "sd_checkpoint_name": None,
                "shape": 32,
                "vectors": 3,
            }
        },
        "skipped": {
            "broken": {
                "step": None,
                "sd_checkpoint": None,
                "sd_checkpoint_name": None,
                "shape": None,
                "vectors": None,
            }
        },
    }
    models = {m["model_name"]: m for m in listings.sd_models(library, {})}
    folder = library.root / "Stable-diffusion"
    assert sorted(models) == sorted(path.stem for path in folder.glob("*.safetensors"))
    assert models["tiny-sd15"]["filename"] == str(folder / "tiny-sd15.safetensors")
    assert models["tiny-sd15"]["config"] is None


def test_refresh_finds_files_copied_in_later(library):
    assert listings.sd_vae(library, {})[0]["model_name"] == "soft.vae.safetensors"
    shutil.copy(library.root / "VAE" / "soft.vae.safetensors", library.root / "VAE" / "sharp.safetensors")
    assert len(listings.sd_vae(library, {})) == 1  # listings are kept until refreshed, as in A1111
    assert listings.refresh_vae(library, {}) is None
    assert [v["model_name"] for v in listings.sd_vae(library, {})] == [
        "sharp.safetensors",
        "soft.vae.safetensors",
    ]


# A1111 infotext as its web UI writes it; the expected values follow `parse_generation_parameters` by hand.
INFOTEXT = (
    "a photo of a cat,\nhighly detailed\n"
    'Negative prompt: blurry, "bad hands"\n'
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "detail: 1a2b3c, style: 0f0e0d", '
    "Version: v1.10.1"
)


def test_infotext_is_parsed_as_a1111_does():
    parsed = parse_infotext(INFOTEXT)
    assert parsed["Prompt"] == "a photo of a cat,\nhighly detailed"
    assert parsed["Negative prompt"] == 'blurry, "bad hands"'
    assert (parsed["Steps"], parsed["Sampler"], parsed["Schedule type"], parsed["Seed"]) == (
        "20",
        "DPM++ 2M",
        "Karras",
        "1234",
    )
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "768") and "Size" not in parsed
    assert parsed["Lora hashes"] == "detail: 1a2b3c, style: 0f0e0d"
    assert parsed["Clip skip"] == "1" and parsed["Hires resize-1"] == 0 and parsed["RNG"] == "GPU"
    # Fewer than three "Key: value" pairs: the last line is prompt too.
    assert parse_infotext("a dog\nSteps: 3")["Prompt"] == "a dog\nSteps: 3"


@pytest.mark.parametrize("samples_format", ["png", "jpg", "webp"])
def test_png_info_reads_every_format_back(samples_format):
    encoded = encode_base64(Image.new("RGB", (16, 16), "teal"), INFOTEXT, ImageEncoding(samples_format))
    body = listings.png_info(None, {"image": f"data:image/{samples_format};base64,{encoded}"})
    assert body["info"] == INFOTEXT and body["parameters"]["Model"] == "v1-5-pruned-emaonly"
    assert ("exif comment" in body["items"]) is (samples_format != "png")


def test_png_info_refuses_what_is_not_an_image():
    with pytest.raises(RequestError, match="^image: is not an image in a supported format"):
        listings.png_info(None, {"image": base64.b64encode(b"hello").decode()})


# --- the image encoder -------------------------------------------------------------------------------------


def test_encoder_writes_what_pil_reads():
    image = Image.new("RGBA", (20, 10), (200, 10, 10, 128))
    png = Image.open(io.BytesIO(encode_image(image, "x, Steps: 2")))
    assert png.format == "PNG" and png.mode == "RGBA" and png.info["parameters"] == "x, Steps: 2"
    jpeg = Image.open(io.BytesIO(encode_image(image, "naïve ✓", ImageEncoding("jpeg", jpeg_quality=95))))
    assert jpeg.format == "JPEG" and jpeg.mode == "RGB"
    comment = jpeg.getexif().get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
    assert comment == b"UNICODE\x00" + "naïve ✓".encode("utf-16-be")
    lossless = encode_image(image.convert("RGB"), None, ImageEncoding("webp", webp_lossless=True))
    assert Image.open(io.BytesIO(lossless)).convert("RGB").tobytes() == image.convert("RGB").tobytes()
    assert read_infotext(encode_image(image, "t", ImageEncoding("webp"))) == "t"


def test_encoder_refuses_sizes_and_formats_it_cannot_write():
    with pytest.raises(RequestError, match="samples_format"):
        ImageEncoding("gif")
    with pytest.raises(RequestError, match="16383"):
        encode_image(Image.new("RGB", (16384, 8)), None, ImageEncoding("webp"))


# --- options -----------------------------------------------------------------------------------------------


@pytest.fixture
def options(demo_models):
    catalog = ModelCatalog(demo_models)
    return OptionsStore(catalog, lambda: catalog.find_checkpoint("tiny-sd15"))


def test_every_option_the_engine_reads_has_a1111s_default():
    assert set(OVERRIDE_SETTINGS) <= set(DEFAULTS)


def test_options_start_at_a1111_defaults_and_report_the_checkpoint(options):
    listed = options.listing()
    assert listed["CLIP_stop_at_last_layers"] == 1 and listed["samples_format"] == "png"
    assert listed["sd_model_checkpoint"].startswith("tiny-sd15.safetensors")
    assert options.for_request() == {}  # nothing set on purpose: request fields keep their say


def test_set_validates_and_stores_a1111_options(options):
    options.set({"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "tiny-sdxl", "show_progressbar": False})
    assert options.for_request() == {
        "CLIP_stop_at_last_layers": 2,
        "sd_model_checkpoint": "tiny-sdxl.safetensors",
    }
    listed = options.listing()
    assert listed["show_progressbar"] is False and listed["sd_model_checkpoint"].startswith("tiny-sdxl")
    with pytest.raises(
        RequestError, match="^options.CLIP_stop_at_last_layers: must be an integer from 1 to 12"
    ):
        options.set({"CLIP_stop_at_last_layers": 40, "samples_format": "jpg"})
    assert options.encoding().samples_format == "png"  # nothing of a rejected call is stored
    with pytest.raises(RequestError, match="^options.emphasis: unknown emphasis mode 'Bogus'"):
        options.set({"emphasis": "Bogus"})
    with pytest.raises(NotFoundError, match="tiny-sd15"):
        options.set({"sd_model_checkpoint": "nope"})


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"my_flag": 1}, "^options.my_flag: is not an A1111 option"),
        ({"show_progressbar": "yes"}, "^options.show_progressbar: must be true or false"),
        ({"n_rows": 2.5}, "^options.n_rows: must be an integer"),
        ({"img_downscale_threshold": float("inf")}, "^options.img_downscale_threshold: must be a number"),
        ({"font": "x" * 5000}, "^options.font: must be a string of at most 1024 characters"),
        ({"hidden_tabs": ["a"] * 1000}, "^options.hidden_tabs: must be a list of at most 256 strings"),
    ],
)
def test_set_refuses_unknown_keys_and_values_of_the_wrong_type_or_size(options, payload, message):
    with pytest.raises(RequestError, match=message):
        options.set({"CLIP_stop_at_last_layers": 2, **payload})
    assert options.for_request() == {}  # nothing of a refused call is stored
    assert not set(payload) & set(options.listing())


def test_overrides_are_kept_only_without_restore_afterwards_and_only_when_applied(options):
    assert options.overrides_to_keep({"CLIP_stop_at_last_layers": 3}, restore_afterwards=True) == {}
    kept = options.overrides_to_keep(
        {"CLIP_stop_at_last_layers": 3, "samples_format": "webp", "not_an_option": 1}, restore_afterwards=False
    )
    assert options.for_request() == {}  # checked, not stored: the request may still fail
    options.apply(kept)
    assert options.for_request() == {"CLIP_stop_at_last_layers": 3}
    assert options.encoding().samples_format == "webp"
    assert "not_an_option" not in options.listing()  # the request's warnings report it as ignored


def test_encoding_prefers_the_request_then_the_options(options):
    options.set({"samples_format": "jpg", "jpeg_quality": 60})
    assert options.encoding() == ImageEncoding("jpg", 60, False)
    assert options.encoding({"samples_format": "PNG"}) == ImageEncoding("png", 60, False)
    with pytest.raises(RequestError, match="^override_settings.jpeg_quality"):
        options.encoding({"jpeg_quality": 0})


# --- job state ---------------------------------------------------------------------------------------------


def test_progress_follows_a1111s_formula():
    jobs = JobState()
    assert jobs.progress()["state"]["job_count"] == 0 and jobs.progress()["progress"] == 0
    with jobs.running("txt2img", "task(abc)", passes=2) as job:
        # Second batch of two, hires pass, step 5 of 10: A1111 counts 4 jobs, this is job 3 (0-based).
        job.record(Progress(iteration=1, iterations=2, call=4, total=10, stage="hires"))
        shown = jobs.progress()
        assert shown["state"]["job_count"] == 4 and shown["state"]["job_no"] == 3
        assert shown["progress"] == pytest.approx(0.01 + 3 / 4 + 5 / 10 / 4)
        assert shown["current_task"] == "task(abc)" and shown["state"]["job"] == "scripts_txt2img"
    assert jobs.progress()["current_task"] is None


def test_interrupt_and_skip_flag_the_running_job_only():
    jobs = JobState()
    jobs.interrupt()  # idle: no effect, as in A1111 (the flags are reset when a job begins)
    jobs.skip()
    with jobs.running("txt2img", None, passes=1) as job:
        assert not job.stop.requested()
        jobs.skip()
        state = jobs.progress()["state"]
        assert state["skipped"] is True and state["interrupted"] is False and job.stop.requested()
        job.stop.begin_iteration()  # the next batch: a skip no longer applies
        assert not job.stop.requested() and jobs.progress()["state"]["skipped"] is False
        jobs.interrupt()
        assert jobs.progress()["state"]["interrupted"] is True and job.stop.requested()
        job.stop.begin_iteration()  # an interrupt lasts for the rest of the job
        assert job.stop.interrupted and job.stop.reason == "interrupted by POST /sdapi/v1/interrupt"
    with jobs.running("txt2img", None, passes=1) as job:
        assert not job.stop.requested() and jobs.progress()["state"]["interrupted"] is False


def test_a_job_timeout_interrupts_the_job():
    now = [100.0]
    stop = StopSignal(Deadline(seconds=30, started=now[0]), clock=lambda: now[0])
    now[0] += 29.9
    assert not stop.requested()
    now[0] += 0.1
    assert stop.requested() and stop.interrupted
    assert stop.reason == "stopped by the job timeout (JOB_TIMEOUT_S=30 s)"
    stop.interrupt()  # the first reason stays
    assert stop.reason.startswith("stopped by the job timeout")

