"""The opt-in speed-ups: settings, what each one does to the models, and that they stay off by default."""

import string

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel

from engine.demo.tiny import tiny_components, write_tiny_checkpoint, write_tiny_vae
from engine.pipeline import A1111Pipeline
from engine.prompts import parse_prompt_attention
from engine.prompts.conditioning import build_conditioning
from engine.prompts.options import PassShape, PromptOptions, prompt_options_from
from engine.resources.catalog import ModelCatalog
from engine.resources.loader import Precision
from engine.resources.vae import ExternalVaes
from engine.sampling.guidance import GuidedUNet
from engine.settings import Settings
from engine.speedups import SpeedUps, compile_regions


@pytest.fixture(scope="module")
def sd15():
    components = tiny_components("sd15")
    return A1111Pipeline(**{k: components.get(k) for k in A1111Pipeline._get_signature_keys(A1111Pipeline)[0]})


def test_all_off_by_default_and_read_from_the_environment():
    assert Settings().speedups == SpeedUps() == SpeedUps(False, False, False, False)
    env = {"COMPILE_UNET": "1", "CHANNELS_LAST": "true", "SDXL_VAE_FP16_FIX": "on", "PAD_COND_UNCOND": "0"}
    assert Settings.from_env(env).speedups == SpeedUps(True, True, True, False)
    with pytest.raises(ValueError, match="CHANNELS_LAST"):
        SpeedUps.from_env({"CHANNELS_LAST": "maybe"})


def test_channels_last_converts_the_unet_weights():
    unet = tiny_components("sd15")["unet"]
    conv = unet.conv_in.weight
    assert not conv.is_contiguous(memory_format=torch.channels_last)
    SpeedUps(channels_last=True).prepare_denoiser(unet)
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    SpeedUps().prepare_denoiser(unet)  # off: nothing is compiled
    assert all(getattr(module, "_compiled_call_impl", None) is None for module in unet.modules())


def test_compile_setting_compiles_the_repeated_blocks_of_unet_and_controlnet():
    unet = tiny_components("sd15")["unet"]
    SpeedUps(compile_unet=True).prepare_denoiser(unet)
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert blocks and all(block._compiled_call_impl is not None for block in blocks)
    assert unet._compiled_call_impl is None  # regional: the UNet's own forward stays eager
    controlnet = ControlNetModel.from_unet(tiny_components("sd15")["unet"])
    assert compile_regions(controlnet) == sum(
        type(m).__name__ == "BasicTransformerBlock" for m in controlnet.modules()) > 0


@pytest.mark.slow
def test_compiled_unet_gives_the_same_image(sd15):
    """Inductor on CPU (needs a C++ compiler; minutes on a loaded machine): the same noise prediction."""
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor(500.0)
    context = torch.randn(2, 77, sd15.unet.config.cross_attention_dim)
    eager = sd15.unet(x, t, encoder_hidden_states=context).sample
    compiled_unet = tiny_components("sd15")["unet"]
    compiled_unet.load_state_dict(sd15.unet.state_dict())
    SpeedUps(compile_unet=True, channels_last=True).prepare_denoiser(compiled_unet)
    with torch.no_grad():
        compiled = compiled_unet(x, t, encoder_hidden_states=context).sample
    torch.testing.assert_close(compiled, eager.detach(), atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_pad_cond_uncond_batches_prompts_of_unequal_lengths(sd15):
    negative = " ".join(string.ascii_lowercase[i % 26] for i in range(80))  # two chunks against one
    shape = PassShape(64, 64, 4)
    padded = build_conditioning(sd15, ["a b"], [negative], shape, PromptOptions(pad_cond_uncond=True),
                                parse_prompt_attention)
    plain = build_conditioning(sd15, ["a b"], [negative], shape, PromptOptions(), parse_prompt_attention)
    step, unpadded = padded(0), plain(0)
    assert step.cond.shape[1] == step.uncond.shape[1] == 154
    torch.testing.assert_close(step.cond[:, :77], unpadded.cond)
    empty = build_conditioning(sd15, [""], [""], shape, PromptOptions(), parse_prompt_attention)(0).cond
    torch.testing.assert_close(step.cond[:, 77:], empty)  # the empty prompt's chunk, as A1111 pads
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor(300.0)
    guided = GuidedUNet(sd15.unet, 7.0, padded)
    guided(x, t, 0)
    assert guided.calls == 1  # one batched call instead of two
    assert padded.extra_generation_params["Pad conds"] is True
    assert "Pad conds" not in plain.extra_generation_params


def test_pad_cond_uncond_is_an_a1111_override_setting():
    assert prompt_options_from({"pad_cond_uncond": True}).pad_cond_uncond
    assert not prompt_options_from({}).pad_cond_uncond


@pytest.fixture
def sdxl_models(tmp_path):
    write_tiny_checkpoint("sdxl", "tiny-sdxl", tmp_path)
    return tmp_path


def test_fp16_fixed_vae_is_used_in_fp16_without_upcast(sdxl_models):
    written = write_tiny_vae("sdxl", sdxl_models / "VAE" / "sdxl-vae-fp16-fix.safetensors", seed=3)
    catalog = ModelCatalog(sdxl_models)
    checkpoint = catalog.checkpoints()[0]
    vaes = ExternalVaes(catalog, [sdxl_models / "configs"], Precision(torch.device("cpu"), torch.float16))
    vae = vaes.fp16_fixed(checkpoint, Precision(torch.device("cpu"), torch.float16))
    assert vae.dtype == torch.float16 and vae.config.force_upcast is False
    original = written.state_dict()["decoder.conv_out.weight"]
    np.testing.assert_allclose(vae.decoder.conv_out.weight.detach().float().numpy(), original.detach().half().float().numpy())
    # fp32 devices have nothing to fix; without such a file there is nothing to use.
    assert vaes.fp16_fixed(checkpoint, Precision(torch.device("cpu"), torch.float32)) is None
    (sdxl_models / "VAE" / "sdxl-vae-fp16-fix.safetensors").rename(sdxl_models / "VAE" / "sdxl_vae.safetensors")
    fresh = ExternalVaes(ModelCatalog(sdxl_models), [sdxl_models / "configs"], vaes.precision)
    assert fresh.fp16_fixed(checkpoint, vaes.precision) is None
