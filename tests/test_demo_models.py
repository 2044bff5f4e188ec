"""Tiny demo models: real LDM single-file layout, bit-exact round trip through diffusers, offline tokenizer."""

import socket

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from diffusers.loaders.single_file_utils import infer_diffusers_model_type
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from engine.demo.ldm_format import single_file_state_dict, unet_to_ldm
from engine.demo.models import write_demo_models
from engine.demo.tiny import tiny_components


PIPELINES = {
    "sd15": StableDiffusionPipeline,
    "sdxl": StableDiffusionXLPipeline,
    "sdxl_refiner": StableDiffusionXLImg2ImgPipeline,
}
MODEL_COMPONENTS = {
    "sd15": ("unet", "vae", "text_encoder"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2"),
    "sdxl_refiner": ("unet", "vae", "text_encoder_2"),
}
FAMILIES = list(PIPELINES)
# Names as they appear in real A1111 checkpoints (v1-5-pruned-emaonly, sd_xl_base_1.0), and the diffusers
# model type its single-file loader infers from a real file of that family.
REAL_KEYS = {
    "sd15": (
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
        "first_stage_model.decoder.mid.block_1.norm1.weight",
        "first_stage_model.quant_conv.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
    ),
    "sdxl": (
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.input_blocks.4.1.proj_in.weight",
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.1.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.output_blocks.8.0.skip_connection.weight",
        "first_stage_model.decoder.mid.attn_1.proj_out.weight",
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight",
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
        "conditioner.embedders.1.model.positional_embedding",
        "conditioner.embedders.1.model.token_embedding.weight",
        "conditioner.embedders.1.model.ln_final.weight",
        "conditioner.embedders.1.model.text_projection",
    ),
    # sd_xl_refiner_1.0: 4 levels, attention in the middle two, OpenCLIP-G as the only embedder.
    "sdxl_refiner": (
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.input_blocks.4.1.proj_in.weight",
        "model.diffusion_model.input_blocks.8.1.transformer_blocks.1.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.9.0.op.weight",
        "model.diffusion_model.input_blocks.11.0.in_layers.2.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.1.attn1.to_q.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.output_blocks.8.2.conv.weight",
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
        "first_stage_model.decoder.mid.attn_1.proj_out.weight",
        "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias",
        "conditioner.embedders.0.model.positional_embedding",
        "conditioner.embedders.0.model.text_projection",
    ),
}
INFERRED_MODEL_TYPE = {"sd15": "v1", "sdxl": "xl_base", "sdxl_refiner": "xl_refiner"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_demo_models(root)
    return root


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 (huggingface_hub reads it at import, so patch its constant too) and no sockets at all."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise AssertionError("network access during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def checkpoint_of(models_dir, family):
    return models_dir / "Stable-diffusion" / f"tiny-{family}.safetensors"


def load_pipeline(models_dir, family):
    return PIPELINES[family].from_single_file(
        str(checkpoint_of(models_dir, family)),
        config=str(models_dir / "configs" / f"tiny-{family}"),
        local_files_only=True,
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_loads_bit_identical(models_dir, offline, family):
    pipe = load_pipeline(models_dir, family)
    reference = tiny_components(family, seed=0)
    for name in MODEL_COMPONENTS[family]:
        expected = reference[name].state_dict()
        loaded = getattr(pipe, name).state_dict()
        assert loaded.keys() == expected.keys(), name
        differing = [key for key in expected if not torch.equal(loaded[key], expected[key])]
        assert not differing, f"{name}: {differing[:5]}"
    if family != "sd15":
        assert torch.equal(
            pipe.text_encoder_2.text_projection.weight, reference["text_encoder_2"].text_projection.weight
        )
    assert type(pipe.scheduler) is type(reference["scheduler"])
    assert pipe.scheduler.config.steps_offset == 1


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_loaded_pipeline_runs(models_dir, offline, family):
    pipe = load_pipeline(models_dir, family)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a cat", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3)
    assert np.isfinite(image).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_has_real_ldm_names(models_dir, family):
    path = checkpoint_of(models_dir, family)
    state_dict = load_file(path)
    missing = [key for key in REAL_KEYS[family] if key not in state_dict]
    assert not missing
    assert infer_diffusers_model_type(state_dict) == INFERRED_MODEL_TYPE[family]
    assert {tensor.dtype for tensor in state_dict.values()} == {torch.float32}
    # Real VAEs store attention projections as 1x1 convolutions.
    assert state_dict["first_stage_model.encoder.mid.attn_1.q.weight"].shape[-2:] == (1, 1)
    with safe_open(path, "pt") as handle:
        assert "noise" in handle.metadata()["demo"]
    assert not list((models_dir / "configs" / f"tiny-{family}").rglob("*.safetensors"))


def test_sdxl_open_clip_layout_fuses_qkv_and_transposes_projection(models_dir):
    state_dict = load_file(checkpoint_of(models_dir, "sdxl"))
    encoder = tiny_components("sdxl")["text_encoder_2"]
    attention = encoder.text_model.encoder.layers[0].self_attn
    fused = torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])
    prefix = "conditioner.embedders.1.model."
    assert torch.equal(state_dict[prefix + "transformer.resblocks.0.attn.in_proj_weight"], fused)
    assert torch.equal(state_dict[prefix + "text_projection"], encoder.text_projection.weight.T)
    # diffusers tells SDXL's two encoders apart by width: they must differ.
    assert (
        state_dict[prefix + "positional_embedding"].shape[-1]
        != state_dict[
            "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"
        ].shape[-1]
    )


@pytest.mark.parametrize(
    ("family", "subfolder", "pad_id"),
    [
        ("sd15", "tokenizer", 513),
        ("sdxl", "tokenizer", 513),
        ("sdxl", "tokenizer_2", 0),
        ("sdxl_refiner", "tokenizer_2", 0),
    ],
)
def test_tokenizer_is_one_token_per_character(models_dir, offline, family, subfolder, pad_id):
    tokenizer = CLIPTokenizer.from_pretrained(
        models_dir / "configs" / f"tiny-{family}" / subfolder, local_files_only=True
    )
    # Real CLIP vocab order: printable ASCII first ("!" = 0 ... "~" = 93), the same with "</w>" 256 later.
    # With no merges every character is a token; a word's last one carries "</w>".
    start, end = 512, 513
    expected = [start, ord("a") - 33 + 256, ord("c") - 33, ord("a") - 33, ord("t") - 33 + 256, end]
    encoded = tokenizer("A cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert encoded[: len(expected)] == expected
    assert encoded[len(expected) :] == [pad_id] * (77 - len(expected))
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (start, end, pad_id)


def test_refiner_shares_the_base_vae_and_open_clip_g_as_the_real_one_does(models_dir):
    base, refiner = (load_file(checkpoint_of(models_dir, family)) for family in ("sdxl", "sdxl_refiner"))
    for key in ("first_stage_model.decoder.conv_in.weight", "conditioner.embedders.{}.model.ln_final.weight"):
        assert torch.equal(base[key.format(1)], refiner[key.format(0)])
    assert refiner["model.diffusion_model.label_emb.0.0.weight"].shape[1] == 5 * 8 + 48  # 5 added ids + pooled


def test_components_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    first = tiny_components("sd15", seed=5)["unet"].conv_in.weight
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)
    assert torch.equal(tiny_components("sd15", seed=5)["unet"].conv_in.weight, first)
    assert not torch.equal(tiny_components("sd15", seed=6)["unet"].conv_in.weight, first)


def test_converter_refuses_what_it_cannot_name():
    unet = tiny_components("sd15")["unet"]
    with pytest.raises(ValueError, match="no LDM name"):
        unet_to_ldm({**unet.state_dict(), "mystery.weight": torch.zeros(1)}, unet.config)
    with pytest.raises(ValueError, match="'sd15', 'sdxl'"):
        single_file_state_dict("sd3", {})
