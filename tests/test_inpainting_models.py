"""Inpainting checkpoints (9-channel UNet): detected from the weights, loaded exactly, fed A1111's inputs."""

import base64
import io
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from engine import Engine
from engine.demo.tiny import INPAINTING_IN_CHANNELS, tiny_components, write_tiny_checkpoint
from engine.errors import UnsupportedError
from engine.imaging.inpaint import blur_mask
from engine.resources.loader import Precision, load_pipeline, unet_in_channels
from engine.sampling.guidance import GuidedUNet, StepConditioning, constant


CHECKPOINT = "tiny-sd15_inpainting"
BASE = {"prompt": "a cat", "negative_prompt": "dull", "seed": 9, "steps": 3, "width": 64, "height": 64,
        "sampler_name": "Euler", "cfg_scale": 7}


@pytest.fixture(scope="module")
def engine(demo_models):
    return Engine.from_models_dir(demo_models, device="cpu", default_checkpoint=CHECKPOINT)


@pytest.fixture(scope="module")
def pipe(engine):
    return engine._pipelines.get(engine.catalog.find_checkpoint(CHECKPOINT))


@contextmanager
def unet_inputs(pipe):
    """Every `sample` the UNet receives, as fp32 CPU copies."""
    seen = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(args[0].detach().float().cpu().clone()), with_kwargs=True
    )
    try:
        yield seen
    finally:
        handle.remove()


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def photo(width=64, height=64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 255, (height, width, 3), dtype=np.uint8))


def box_mask(size, box) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def vae_sample(vae, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A1111's `images_tensor_to_samples` spelled out: a posterior sample (CPU fp32 noise) × scale factor."""
    posterior = vae.encode(pixels).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator, dtype=torch.float32)
    return (posterior.mean + posterior.std * noise) * vae.config.scaling_factor


def test_nine_channel_file_is_detected_and_loaded_bit_identically(demo_models):
    path = demo_models / "Stable-diffusion" / f"{CHECKPOINT}.safetensors"
    config = demo_models / "configs" / CHECKPOINT / "unet" / "config.json"
    assert unet_in_channels(path) == 9 and '"in_channels": 4' in config.read_text()
    loaded = load_pipeline(path, [demo_models / "configs"], Precision.for_device("cpu"))
    written = tiny_components("sd15", seed=1, in_channels=INPAINTING_IN_CHANNELS)
    assert loaded.is_inpainting and loaded.unet.config.in_channels == 9
    for name in ("unet", "vae", "text_encoder"):
        expected, actual = written[name].state_dict(), getattr(loaded, name).state_dict()
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[key], actual[key]) for key in expected), name
    plain = load_pipeline(demo_models / "Stable-diffusion" / "tiny-sd15.safetensors",
                          [demo_models / "configs"], Precision.for_device("cpu"))
    assert not plain.is_inpainting


def test_sdxl_inpainting_checkpoint_loads_with_nine_channels(tmp_path):
    write_tiny_checkpoint("sdxl", "xl-inpainting", tmp_path, in_channels=INPAINTING_IN_CHANNELS)
    loaded = load_pipeline(tmp_path / "Stable-diffusion" / "xl-inpainting.safetensors",
                           [tmp_path / "configs"], Precision.for_device("cpu"))
    written = tiny_components("sdxl", in_channels=INPAINTING_IN_CHANNELS)["unet"]
    assert loaded.is_sdxl and loaded.is_inpainting
    assert torch.equal(loaded.unet.conv_in.weight, written.conv_in.weight)


def test_other_unet_widths_are_refused_naming_the_supported_ones(tmp_path):
    path = tmp_path / "pix2pix.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 8, 3, 3)}, path)
    with pytest.raises(UnsupportedError, match="8 input channels; supported: 4 .* and 9"):
        unet_in_channels(path)


def test_txt2img_feeds_a_full_mask_and_the_gray_images_latent(engine, pipe):
    with unet_inputs(pipe) as seen:
        result = engine.txt2img(BASE)
    assert result.images[0].size == (64, 64) and len(seen) == BASE["steps"]
    # A1111 txt2img_image_conditioning: mask of ones, then the VAE sample of a 0.5-gray image (0 in [-1, 1]).
    expected = vae_sample(pipe.vae, torch.zeros(1, 3, 64, 64), torch.Generator().manual_seed(BASE["seed"]))
    for sample in seen:
        assert sample.shape == (2, 9, 8, 8)  # cond row and uncond row
        assert torch.equal(sample[:, 4], torch.ones(2, 8, 8))
        torch.testing.assert_close(sample[:, 5:], expected.expand(2, -1, -1, -1), rtol=1e-5, atol=1e-5)


def test_hires_fix_feeds_a_full_mask_at_the_hires_size(engine, pipe):
    payload = {**BASE, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.5,
               "hr_second_pass_steps": 2}
    with unet_inputs(pipe) as seen:
        assert engine.txt2img(payload).images[0].size == (96, 96)
    hires = seen[BASE["steps"]:]
    assert len(hires) == 2 and all(sample.shape == (2, 9, 12, 12) for sample in hires)
    assert all(torch.equal(sample[:, 4], torch.ones(2, 12, 12)) for sample in hires)


def test_img2img_inpainting_feeds_the_mask_and_the_masked_image(engine, pipe):
    image, mask = photo(), box_mask((64, 64), (20, 12, 43, 35))
    payload = {**BASE, "init_images": [b64(image)], "mask": b64(mask), "mask_blur": 0, "inpainting_fill": 1,
               "inpaint_full_res": False, "denoising_strength": 0.75}
    with unet_inputs(pipe) as seen:
        engine.img2img(payload)
    assert len(seen) == int(0.75 * BASE["steps"]) + 1
    # The mask, rounded, nearest-resized to latent size; the masked image: the photo blanked (0) under it.
    keep = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255).round()
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    generator = torch.Generator().manual_seed(BASE["seed"])
    vae_sample(pipe.vae, pixels, generator)  # the init latents draw first from A1111's global RNG
    expected = vae_sample(pipe.vae, pixels * (1 - keep), generator)
    for sample in seen:
        assert sample.shape == (2, 9, 8, 8)
        assert torch.equal(sample[:, 4], keep[::8, ::8].expand(2, -1, -1))
        torch.testing.assert_close(sample[:, 5:], expected.expand(2, -1, -1, -1), rtol=1e-5, atol=1e-5)


def test_only_masked_inpainting_keeps_pixels_outside_the_blurred_mask(engine, pipe):
    image, mask = photo(96, 64), box_mask((96, 64), (40, 20, 60, 40))
    payload = {**BASE, "init_images": [b64(image)], "mask": b64(mask), "mask_blur": 4, "inpainting_fill": 1,
               "inpaint_full_res": True, "inpaint_full_res_padding": 8, "denoising_strength": 0.75}
    with unet_inputs(pipe) as seen:
        output = np.asarray(engine.img2img(payload).images[0]).astype(int)
    assert all(sample.shape[1] == 9 for sample in seen)
    # The crop's mask channel marks the box (repaint) and leaves the padding around it (keep).
    assert seen[0][0, 4].max() == 1 and seen[0][0, 4].min() == 0
    outside = np.asarray(blur_mask(mask, 4)) == 0
    assert np.array_equal(output[outside], np.asarray(image).astype(int)[outside])
    assert not np.array_equal(output, np.asarray(image))


def test_img2img_without_a_mask_masks_everything(engine, pipe):
    with unet_inputs(pipe) as seen:
        engine.img2img({**BASE, "init_images": [b64(photo())], "denoising_strength": 0.5})
    assert all(torch.equal(sample[:, 4], torch.ones(2, 8, 8)) for sample in seen)


def test_adetailer_runs_on_an_inpainting_checkpoint(engine, pipe):
    unit = {"ad_model": "face_yolov8n.pt", "ad_confidence": 0.001, "ad_mask_k": 1, "ad_mask_blur": 4,
            "ad_denoising_strength": 0.5, "ad_inpaint_only_masked_padding": 8}
    payload = {**BASE, "alwayson_scripts": {"ADetailer": {"args": [True, False, unit]}}}
    stages = []
    with unet_inputs(pipe) as seen:
        result = engine.txt2img(payload, on_progress=lambda progress: stages.append(progress.stage))
    detailer = [sample for sample, stage in zip(seen, stages, strict=True) if stage == "adetailer"]
    assert len(detailer) == int(0.5 * BASE["steps"]) + 1
    # The detailer's crop has a real mask: some latent pixels repainted, some kept.
    assert all(sample.shape[1] == 9 and 0 < sample[0, 4].mean() < 1 for sample in detailer)
    assert result.images[0].size == (64, 64)


class RecordingUNet(torch.nn.Module):
    """Stands in for the UNet to see which rows GuidedUNet builds; predicts zero noise."""

    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, sample, timestep, encoder_hidden_states, return_dict, added_cond_kwargs):
        self.inputs.append(sample)
        return (torch.zeros_like(sample[:, :4]),)


def test_each_row_gets_its_images_conditioning_with_and_prompts():
    # Image 0 has two `AND` sub-prompts, image 1 one: cond rows are images [0, 0, 1], uncond rows [0, 1].
    conditioning = StepConditioning(
        cond=torch.zeros(3, 77, 8),
        uncond=torch.zeros(2, 77, 8),
        composition=(((0, 1.0), (1, 0.5)), ((2, 1.0),)),
    )
    image_conditioning = torch.arange(2.0)[:, None, None, None].expand(2, 5, 8, 8)
    unet = RecordingUNet()
    guided = GuidedUNet(unet, 7.0, constant(conditioning), image_conditioning=image_conditioning)
    guided(torch.zeros(2, 4, 8, 8), torch.tensor(999), 0)
    (sample,) = unet.inputs
    assert sample.shape == (5, 9, 8, 8)
    assert sample[:, 4:, 0, 0].tolist() == [[image] * 5 for image in (0.0, 0.0, 1.0, 0.0, 1.0)]
