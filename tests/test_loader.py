"""Checkpoints load offline in both formats A1111 users have, on the device and dtype production uses."""

import pytest
import torch

from engine import Engine
from engine.demo.tiny import tiny_components
from engine.pipeline import A1111Pipeline
from engine.resources.loader import Precision, detect_family, load_pipeline


def test_a_diffusers_folder_checkpoint_runs(tmp_path):
    components = tiny_components("sd15", seed=3)
    folder = tmp_path / "Stable-diffusion" / "tiny-sd15-folder"
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(folder)
    engine = Engine.from_models_dir(tmp_path, device="cpu")
    result = engine.txt2img(
        {
            "prompt": "x",
            "steps": 2,
            "width": 64,
            "height": 64,
            "override_settings": {"sd_model_checkpoint": "tiny-sd15-folder"},
        }
    )
    assert result.images[0].size == (64, 64)
    pipe = engine._pipelines.get(engine.catalog.find_checkpoint("tiny-sd15-folder"))
    assert torch.equal(pipe.unet.conv_in.weight, components["unet"].conv_in.weight)


def test_family_is_read_from_the_weights(demo_models):
    assert detect_family(demo_models / "Stable-diffusion" / "tiny-sd15.safetensors") == "sd15"
    assert detect_family(demo_models / "Stable-diffusion" / "tiny-sdxl.safetensors") == "sdxl"


def test_cuda_precision_is_fp16_and_cpu_fp32():
    # The production choice, decided without a GPU: CUDA devices run fp16, the CPU fp32.
    assert Precision.for_device("cuda").dtype == torch.float16
    assert Precision.for_device("cuda:1").device == torch.device("cuda", 1)
    assert Precision.for_device("cpu").dtype == torch.float32


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_fp16_load_path_runs_on_cpu(demo_models, family):
    """The CUDA branch of the loader (fp16 weights, SDXL's VAE kept fp32) exercised on the CPU."""
    path = demo_models / "Stable-diffusion" / f"tiny-{family}.safetensors"
    pipe: A1111Pipeline = load_pipeline(
        path, [demo_models / "configs"], Precision(torch.device("cpu"), torch.float16)
    )
    assert pipe.unet.dtype == torch.float16
    assert pipe.text_encoder.dtype == torch.float16
    expected_vae = torch.float32 if pipe.vae.config.get("force_upcast", False) else torch.float16
    assert pipe.vae.dtype == expected_vae


@pytest.mark.gpu
def test_generation_on_cuda(demo_models):
    if not torch.cuda.is_available():
        pytest.fail("the gpu marker was selected but no CUDA device is visible")
    engine = Engine.from_models_dir(demo_models, device="cuda", default_checkpoint="tiny-sdxl")
    result = engine.txt2img(
        {"prompt": "x", "steps": 2, "width": 64, "height": 64, "sampler_name": "DPM++ SDE Karras"}
    )
    assert result.images[0].size == (64, 64)
