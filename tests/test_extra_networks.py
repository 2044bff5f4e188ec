"""`<lora:…>` tags everywhere A1111 reads them: each pass activates its own prompt's networks (A1111
`extra_networks.activate` before the first pass, before hires fix with `hr_extra_network_data`, and in
ADetailer's inner img2img), on whichever checkpoint runs the pass; negative prompts are text, as in A1111.

A forward pre-hook on each UNet records, per model call, the LoRA scaling of a layer the demo LoRA targets:
multiplier × alpha / rank while the LoRA is active, nothing otherwise.
"""

import json

import pytest
import torch

from engine import Engine
from engine.demo.lora import ALPHA, RANK
from engine.demo.tiny import write_tiny_vae


LORA = "tiny-sd15-style"
PROBE = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
SMALL = {"prompt": "a portrait", "negative_prompt": "blurry", "seed": 5, "steps": 3, "width": 64, "height": 64,
         "sampler_name": "Euler"}
HIRES = {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.6, "hr_second_pass_steps": 2}
OTHER = "tiny-sd15_inpainting"


def scale(multiplier: float) -> float:
    return multiplier * ALPHA / RANK


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine(demo_models, tmp_path_factory):
    """The demo models plus an external VAE (`VAE/tiny-vae.safetensors`), the demo folders linked, not copied."""
    root = tmp_path_factory.mktemp("models")
    for folder in demo_models.iterdir():
        (root / folder.name).symlink_to(folder, target_is_directory=folder.is_dir())
    write_tiny_vae("sd15", root / "VAE" / "tiny-vae.safetensors", seed=7)
    return Engine.from_models_dir(root, device="cpu", default_checkpoint="tiny-sd15")


def unet_of(engine, name):
    return engine.pipelines.get(engine.catalog.find_checkpoint(name)).unet


class LoraScales:
    """Per UNet call: (which checkpoint, the LoRA scalings active in the probe layer)."""

    def __init__(self, **unets):
        self.calls = []
        self.handles = [unet.register_forward_pre_hook(self._record(name, unet)) for name, unet in unets.items()]

    def _record(self, name, unet):
        def record(module, args):
            layer = unet.get_submodule(PROBE)
            active = getattr(layer, "active_adapters", []) if hasattr(layer, "base_layer") else []
            self.calls.append((name, tuple(round(layer.scaling[adapter], 6) for adapter in active)))

        return record

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def weights(*modules):
    return [{k: v.clone() for k, v in module.state_dict().items()} for module in modules]


def assert_bit_identical(before, modules):
    for saved, module in zip(before, modules, strict=True):
        assert not hasattr(module, "peft_config")
        now = module.state_dict()
        assert saved.keys() == now.keys() and all(torch.equal(saved[k], now[k]) for k in saved)


def run(engine, payload, *checkpoints):
    unets = {name: unet_of(engine, name) for name in ("tiny-sd15", *checkpoints)}
    pipes = [engine.pipelines.get(engine.catalog.find_checkpoint(name)) for name in unets]
    modules = [module for pipe in pipes for module in (pipe.unet, pipe.text_encoder)]
    before = weights(*modules)
    with LoraScales(**unets) as recorded:
        result = engine.txt2img(payload)
    assert_bit_identical(before, modules)
    return result, recorded.calls


@pytest.mark.parametrize(
    ("prompt", "hr_prompt", "first", "second"),
    [
        # hr_prompt's own tag: the LoRA joins the second pass only.
        ("a portrait", f"<lora:{LORA}:0.5> a portrait", (), (scale(0.5),)),
        # A1111 activates hr_prompt's networks, none: the first pass's LoRA is off for hires fix.
        (f"<lora:{LORA}:1> a portrait", "a portrait, detailed", (scale(1.0),), ()),
        # An empty hr_prompt is the prompt: the same LoRA in both passes.
        (f"<lora:{LORA}:0.8:0.4> a portrait", "", (scale(0.4),), (scale(0.4),)),
    ],
)
def test_hires_pass_activates_hr_prompt_networks(engine, prompt, hr_prompt, first, second):
    result, calls = run(engine, {**SMALL, **HIRES, "prompt": prompt, "hr_prompt": hr_prompt})
    assert calls == [("tiny-sd15", first)] * 3 + [("tiny-sd15", second)] * 2
    infotext = json.loads(result.info)["infotexts"][0]
    assert infotext.startswith(prompt)  # the prompt as written, tags included, as A1111's infotext
    assert ("Lora hashes: " in infotext) == bool(first or second)
    assert (f"Hires prompt: {json.dumps(hr_prompt)}" in infotext) == bool(hr_prompt)


def test_lora_stays_active_on_the_hires_checkpoint(engine):
    payload = {**SMALL, **HIRES, "prompt": f"<lora:{LORA}:0.6> a portrait", "hr_checkpoint_name": OTHER}
    _, calls = run(engine, payload, OTHER)
    assert calls == [("tiny-sd15", (scale(0.6),))] * 3 + [(OTHER, (scale(0.6),))] * 2


def test_negative_prompt_tags_stay_text(engine):
    payload = {**SMALL, **HIRES, "hr_negative_prompt": f"<lora:{LORA}:1> blurry"}
    _, calls = run(engine, payload)
    assert all(scales == () for _, scales in calls)


def adetailer(**unit):
    # Random-weight YOLO scores every box near 0.01: a tiny confidence and k=1 give exactly one mask.
    unit = {"ad_model": "face_yolov8n.pt", "ad_confidence": 0.001, "ad_mask_k": 1, "ad_denoising_strength": 0.5,
            **unit}
    return {"alwayson_scripts": {"ADetailer": {"args": [True, False, unit]}}}


def test_adetailer_prompt_networks_apply_to_its_pass(engine):
    payload = {**SMALL, **adetailer(ad_prompt=f"<lora:{LORA}:0.7> a detailed face")}
    _, calls = run(engine, payload)
    # A1111 img2img at 0.5 of 3 steps: int(0.5 × 3) + 1 = 2 calls, with ad_prompt's LoRA.
    assert calls == [("tiny-sd15", ())] * 3 + [("tiny-sd15", (scale(0.7),))] * 2


def test_adetailer_checkpoint_keeps_the_prompt_lora(engine):
    payload = {**SMALL, "prompt": f"<lora:{LORA}:0.9> a portrait",
               **adetailer(ad_use_checkpoint=True, ad_checkpoint=OTHER)}
    _, calls = run(engine, payload, OTHER)
    # An empty ad_prompt is the image's prompt as written: its tag activates the LoRA on ad_checkpoint.
    assert calls == [("tiny-sd15", (scale(0.9),))] * 3 + [(OTHER, (scale(0.9),))] * 2


def test_disable_extra_networks_reaches_every_pass(engine):
    payload = {**SMALL, **HIRES, "prompt": f"<lora:{LORA}:1> a portrait", "disable_extra_networks": True,
               **adetailer(ad_prompt=f"<lora:{LORA}:1> [PROMPT]")}
    result, calls = run(engine, payload)
    assert all(scales == () for _, scales in calls) and len(calls) == 3 + 2 + 2
    assert "Lora hashes" not in json.loads(result.info)["infotexts"][0]


def test_bad_tag_in_ad_prompt_fails_before_any_work(engine):
    with pytest.raises(Exception, match=r"ad_prompt.*not a number"):
        run(engine, {**SMALL, **adetailer(ad_prompt=f"<lora:{LORA}:strong> face")})


def test_sd_vae_reaches_the_hires_checkpoint(engine):
    own_vae = engine.pipelines.get(engine.catalog.find_checkpoint(OTHER)).vae
    used = []
    handles = [own_vae.register_forward_pre_hook(lambda *args: used.append("own"))]
    for part in ("encoder", "decoder"):
        handles.append(getattr(own_vae, part).register_forward_pre_hook(lambda *args: used.append("own")))
    try:
        payload = {**SMALL, **HIRES, "hr_checkpoint_name": OTHER, "hr_upscaler": "Lanczos",
                   "override_settings": {"sd_vae": "tiny-vae.safetensors"}}
        result = engine.txt2img(payload)
    finally:
        for handle in handles:
            handle.remove()
    assert used == []  # the hires checkpoint encodes and decodes with the request's VAE, not its own
    assert "VAE: tiny-vae.safetensors" in json.loads(result.info)["infotexts"][0]
