"""`<lora:…>` tags: read as A1111 reads them, applied for one request with diffusers' loader, removed bit for bit.

The LoRA files are tiny kohya-format safetensors (the format A1111 users download) written for the tiny demo
models: SD1.5 with diffusers-style module names, SDXL with the original (SGM) block names and te1/te2.
While active, a targeted layer must compute W·x + multiplier · alpha/rank · up(down(x)), A1111's formula.
"""

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.demo.tiny import tiny_components
from engine.errors import RequestError, UnsupportedError
from engine.networks import LoraRequest, lora_requests
from engine.networks.lora import apply_loras
from engine.pipeline import A1111Pipeline
from engine.prompts import extract_extra_networks, parse_prompt_attention
from engine.prompts.encode import PromptEncoder
from engine.resources.catalog import ModelCatalog


RANK, ALPHA = 4, 2.0
ATTENTION = ("to_q", "to_k", "to_v", "to_out_0")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
# family -> kohya key prefixes with (out, in) widths, for a LoRA on the text encoder(s) and the UNet.
FULL_LORA = {
    "sd15": [
        *(
            (f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_{p}", 32, 32)
            for p in ATTENTION
        ),
        ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k", 32, 32),
        *(
            (f"lora_te_text_model_encoder_layers_{i}_self_attn_{p}", 32, 32)
            for i in (0, 11)
            for p in PROJECTIONS
        ),
        ("lora_te_text_model_encoder_layers_0_mlp_fc1", 128, 32),
        ("lora_te_text_model_encoder_layers_0_mlp_fc2", 32, 128),
    ],
    "sdxl": [
        *((f"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_{p}", 64, 64) for p in ATTENTION),
        ("lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k", 64, 80),
        *((f"lora_te1_text_model_encoder_layers_0_self_attn_{p}", 32, 32) for p in PROJECTIONS),
        *((f"lora_te2_text_model_encoder_layers_0_self_attn_{p}", 48, 48) for p in PROJECTIONS),
    ],
}
UNET_ONLY_LORA = {
    "sd15": [
        (f"lora_unet_down_blocks_2_attentions_0_transformer_blocks_0_attn1_{p}", 64, 64) for p in ATTENTION
    ],
    "sdxl": [(f"lora_unet_input_blocks_7_1_transformer_blocks_0_attn1_{p}", 64, 64) for p in ATTENTION],
}
# kohya key -> the module it must reach, per family, and whether A1111 scales it by te or unet.
PROBES = {
    "sd15": [
        (
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
            "unet",
        ),
        (
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
            "text_encoder.encoder.layers.0.self_attn.q_proj",
            "te",
        ),
    ],
    "sdxl": [
        (
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            "unet",
        ),
        (
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
            "text_encoder.encoder.layers.0.self_attn.q_proj",
            "te",
        ),
        (
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj",
            "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj",
            "te",
        ),
    ],
}
UNET_ONLY_PROBE = {
    "sd15": (
        "lora_unet_down_blocks_2_attentions_0_transformer_blocks_0_attn1_to_q",
        "unet.down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q",
    ),
    "sdxl": (
        "lora_unet_input_blocks_7_1_transformer_blocks_0_attn1_to_q",
        "unet.down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q",
    ),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine two threads cost 100x per op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_kohya_lora(path: Path, targets, seed: int, metadata: dict | None = None) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for prefix, out_features, in_features in targets:
        tensors[f"{prefix}.lora_down.weight"] = torch.randn(RANK, in_features, generator=generator) * 0.1
        tensors[f"{prefix}.lora_up.weight"] = torch.randn(out_features, RANK, generator=generator) * 0.1
        tensors[f"{prefix}.alpha"] = torch.tensor(ALPHA)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path, metadata)
    return tensors


def addnet_hash(path: Path) -> str:
    """kohya's "addnet" hash: sha256 of the file after its safetensors header."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def setup(request, tmp_path_factory):
    family = request.param
    components = tiny_components(family, seed=0)
    pipe = A1111Pipeline(
        **{key: components.get(key) for key in A1111Pipeline._get_signature_keys(A1111Pipeline)[0]}
    )
    root = tmp_path_factory.mktemp(family)
    files = {
        "full": root / "Lora" / "styles" / "trained_v3.safetensors",
        "unetonly": root / "Lora" / "unetonly.safetensors",
    }
    tensors = {
        # Named in prompts by its training name (ss_output_name), as A1111 allows.
        "full": write_kohya_lora(
            files["full"], FULL_LORA[family], seed=1, metadata={"ss_output_name": "fancy"}
        ),
        "unetonly": write_kohya_lora(files["unetonly"], UNET_ONLY_LORA[family], seed=2),
    }
    return family, pipe, ModelCatalog(root), files, tensors


def modules_of(pipe) -> dict[str, torch.nn.Module]:
    found = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    if pipe.is_sdxl:
        found["text_encoder_2"] = pipe.text_encoder_2
    return found


def snapshot(pipe) -> dict:
    return {
        name: (
            {key: value.clone() for key, value in module.state_dict().items()},
            [(child, type(sub).__name__) for child, sub in module.named_modules()],
        )
        for name, module in modules_of(pipe).items()
    }


def encode(pipe, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return (
            PromptEncoder(pipe.prompt_encoder(parse_prompt_attention).slots, parse_prompt_attention)
            .encode([prompt])
            .embeds
        )


def module_at(pipe, dotted: str) -> torch.nn.Module:
    component, path = dotted.split(".", 1)
    return getattr(pipe, component).get_submodule(path)


@torch.no_grad()
def assert_lora_delta(pipe, tensors, key: str, dotted: str, multiplier: float) -> None:
    layer = module_at(pipe, dotted)
    x = torch.randn(3, layer.base_layer.in_features, generator=torch.Generator().manual_seed(5))
    down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
    expected = layer.base_layer(x) + multiplier * (ALPHA / RANK) * (x @ down.T @ up.T)
    torch.testing.assert_close(layer(x), expected)


def test_lora_is_applied_with_a1111_multipliers_and_removed_bit_for_bit(setup):
    family, pipe, catalog, files, tensors = setup
    before, encoded_before = snapshot(pipe), encode(pipe, "a b c")
    _, tags = extract_extra_networks(
        "photo <lora:fancy:0.7:0.3> <lora:unetonly:1:0.5>, <lora:unetonly:1:0.5>"
    )
    with apply_loras(pipe, catalog, lora_requests(tags)) as applied:
        for key, dotted, part in PROBES[family]:
            assert_lora_delta(pipe, tensors["full"], key, dotted, 0.7 if part == "te" else 0.3)
        # Mentioned twice: A1111 applies the network twice with its last multipliers.
        assert_lora_delta(pipe, tensors["unetonly"], *UNET_ONLY_PROBE[family], 2 * 0.5)
        assert not torch.allclose(encode(pipe, "a b c"), encoded_before)
        assert applied.notes == []
        assert applied.extra_generation_params == {
            "Lora hashes": f"fancy: {addnet_hash(files['full'])[:12]}, unetonly: {addnet_hash(files['unetonly'])[:12]}"
        }
    after = snapshot(pipe)
    for name, (weights, structure) in before.items():
        assert after[name][1] == structure, name
        assert weights.keys() == after[name][0].keys(), name
        assert all(torch.equal(weights[key], after[name][0][key]) for key in weights), name
        assert getattr(modules_of(pipe)[name], "peft_config", None) is None
    assert torch.equal(encode(pipe, "a b c"), encoded_before)


def test_missing_lora_is_a_note_not_an_error(setup):
    _, pipe, catalog, _, _ = setup
    before = snapshot(pipe)
    with apply_loras(pipe, catalog, [LoraRequest("nope"), LoraRequest("also_missing", 0.5)]) as applied:
        assert applied.notes == ["Networks not found: nope, also_missing"]
        assert applied.extra_generation_params == {}
        assert not applied.adapters
    assert snapshot(pipe)["unet"][1] == before["unet"][1]


def test_lora_is_removed_when_the_request_fails(setup):
    family, pipe, catalog, _, _ = setup
    before = snapshot(pipe)
    wrapped = []

    def request_that_fails():
        with apply_loras(pipe, catalog, [LoraRequest("unetonly")]):
            wrapped.append(hasattr(module_at(pipe, UNET_ONLY_PROBE[family][1]), "base_layer"))  # PEFT layer
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        request_that_fails()
    assert wrapped == [True]
    after = snapshot(pipe)
    assert after["unet"][1] == before["unet"][1]
    assert all(torch.equal(before["unet"][0][key], value) for key, value in after["unet"][0].items())


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("<lora:x>", LoraRequest("x", 1.0, 1.0)),
        ("<lora:x:0.8>", LoraRequest("x", 0.8, 0.8)),
        ("<lora:x:0.8:0.5>", LoraRequest("x", 0.8, 0.5)),
        ("<lora:x:te=0.2>", LoraRequest("x", 0.2, 0.2)),  # unet defaults to the final te
        ("<lora:x:0.8:unet=0.1>", LoraRequest("x", 0.8, 0.1)),
        ("<lora:x:0.8:0.5:te=0.3>", LoraRequest("x", 0.3, 0.5)),
        ("<lyco:x:0.6>", LoraRequest("x", 0.6, 0.6)),
    ],
)
def test_tags_read_as_a1111_reads_them(tag, expected):
    _, tags = extract_extra_networks(f"a {tag} b")
    assert lora_requests(tags) == [expected]


def test_other_extra_networks_are_not_loras():
    _, tags = extract_extra_networks("<hypernet:h:1> <lora:l:1>")
    assert [request.name for request in lora_requests(tags)] == ["l"]


@pytest.mark.parametrize(
    ("tag", "error", "message"),
    [
        ("<lora:x:strong>", RequestError, "'strong' is not a number"),
        ("<lora:x:1:dyn=8>", UnsupportedError, "dyn"),
        ("<lora:x:1:1:8>", UnsupportedError, "dyn"),
        ("<lora:te=1>", RequestError, "names no LoRA"),
    ],
)
def test_bad_tags_are_errors(tag, error, message):
    _, tags = extract_extra_networks(tag)
    with pytest.raises(error, match=message):
        lora_requests(tags)


def test_lora_for_another_model_is_a_note_and_leaves_nothing_behind(setup, tmp_path):
    family, pipe, _, _, _ = setup
    wrong_widths = [(prefix, 16, 16) for prefix, _, _ in UNET_ONLY_LORA[family]]
    write_kohya_lora(tmp_path / "Lora" / "other_model.safetensors", wrong_widths, seed=3)
    before = snapshot(pipe)
    with apply_loras(pipe, ModelCatalog(tmp_path), [LoraRequest("other_model")]) as applied:
        (note,) = applied.notes
        assert note.startswith("LoRA 'other_model' could not be loaded")
        assert not applied.adapters
        # Whatever the failed load left wrapped computes exactly the original layer.
        dotted = UNET_ONLY_PROBE[family][1]
        x = torch.randn(2, 64)
        original = before["unet"][0][dotted.split(".", 1)[1] + ".weight"]
        with torch.no_grad():
            assert torch.equal(module_at(pipe, dotted)(x), torch.nn.functional.linear(x, original))
    assert snapshot(pipe)["unet"][1] == before["unet"][1]
