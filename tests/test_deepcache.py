"""DeepCache step caching (`DEEPCACHE_INTERVAL`): the setting, the shallow path against diffusers' own forward
(with ControlNet, T2I-Adapter and IP-Adapter inputs too), the schedule of full UNet calls, per-call caches,
passes starting afresh (hires fix, refiner), whole txt2img requests with it, and the options listing's
`pad_cond_uncond`."""

import base64
import collections
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Engine
from engine.demo.tiny import tiny_components
from engine.errors import UnsupportedError
from engine.sampling.guidance import GuidedUNet, StepConditioning, constant
from engine.sampling.step_cache import ShallowPath, StepCache
from engine.settings import Settings
from engine.speedups import SpeedUps, StepCaching
from tests.test_host_sync import DEVICE, sampler_run_waits


@pytest.fixture(scope="module")
def unets():
    return {family: tiny_components(family)["unet"] for family in ("sd15", "sdxl")}


def _inputs(unet, batch=2, size=(8, 8), seed=0):
    generator = torch.Generator().manual_seed(seed)
    config = unet.config
    x = torch.randn(batch, 4, *size, generator=generator)
    context = torch.randn(batch, 77, config.cross_attention_dim, generator=generator)
    added = None
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        added = {"text_embeds": torch.randn(batch, pooled, generator=generator), "time_ids": torch.rand(batch, 6)}
    return x, torch.tensor(500.0 + seed), context, added


def _deep_calls(unet) -> collections.Counter:
    """Counts the mid block's forwards: it runs in a full UNet call only."""
    counter = collections.Counter()
    unet.mid_block.register_forward_hook(lambda module, args, output: counter.update(["full"]))
    return counter


def test_setting_is_off_by_default_and_checked():
    assert SpeedUps().step_caching is None and Settings().speedups.deepcache_interval == 0
    speedups = SpeedUps.from_env({"DEEPCACHE_INTERVAL": "3", "DEEPCACHE_BRANCH": "2"})
    assert speedups.step_caching == StepCaching(3, 2)
    assert SpeedUps.from_env({"DEEPCACHE_INTERVAL": "0"}).step_caching is None
    for env, accepted in [
        ({"DEEPCACHE_INTERVAL": "1"}, "0 \\(off\\) or an integer >= 2"),
        ({"DEEPCACHE_INTERVAL": "three"}, "0 \\(off\\) or an integer >= 2"),
        ({"DEEPCACHE_BRANCH": "-1"}, "DEEPCACHE_BRANCH must be an integer >= 0"),
    ]:
        with pytest.raises(ValueError, match=accepted):
            SpeedUps.from_env(env)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("size", [(8, 8), (10, 6)])  # (10, 6): diffusers passes the upsamplers explicit sizes
@torch.no_grad()
def test_shallow_path_with_its_own_deep_feature_is_diffusers_forward(unets, family, size):
    """diffusers' output, bit for bit, when the deep feature comes from the same input (the shallowest branch,
    the first past a downsampler, the deepest); another input's deep feature changes it (the check can fail)."""
    unet = unets[family]
    x, t, context, added = _inputs(unet, size=size)
    reference = unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
    branches = 12 if family == "sd15" else 9  # the released architectures' skip connections
    for branch in (0, 3, branches - 1):
        path = ShallowPath(unet, branch)
        full, deep = path.full(x, t, context, {"added_cond_kwargs": added})
        assert torch.equal(full, reference)
        shallow = path.shallow(x, t, context, {"added_cond_kwargs": added}, deep)
        assert torch.equal(shallow, reference), f"branch {branch}"
    _, other = path.full(*_inputs(unet, size=size, seed=1)[:3], {"added_cond_kwargs": _inputs(unet, seed=1)[3]})
    assert not torch.allclose(path.shallow(x, t, context, {"added_cond_kwargs": added}, other), reference)
    with pytest.raises(UnsupportedError, match=f"^DEEPCACHE_BRANCH: the worker's setting must be from 0 to {branches - 1}"):
        ShallowPath(unet, branches)


def _control_inputs(unet, x, t, context, added):
    """A factory of diffusers' ControlNet and T2I-Adapter inputs (random, at the shapes this UNet adds them):
    a fresh list each time, since diffusers pops the adapter features as it adds them."""
    skips, adapter_points = [], []
    hooks = [unet.conv_in.register_forward_hook(lambda module, args, output: skips.append(output.shape))]
    for block in unet.down_blocks:
        def record(module, args, output):
            hidden, res = output
            skips.extend(sample.shape for sample in res)
            # diffusers adds a block's adapter feature to its last layer (cross-attention) or its output.
            cross = getattr(module, "has_cross_attention", False)
            adapter_points.append(res[len(module.resnets) - 1].shape if cross else hidden.shape)
        hooks.append(block.register_forward_hook(record))
    unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added)
    for hook in hooks:
        hook.remove()
    generator = torch.Generator().manual_seed(5)
    down = tuple(torch.randn(shape, generator=generator) for shape in skips)
    mid = torch.randn(skips[-1], generator=generator)  # the mid block keeps the deepest feature's shape
    features = [torch.randn(shape, generator=generator) for shape in adapter_points[:3]]
    return lambda: {"added_cond_kwargs": added, "down_block_additional_residuals": down,
                    "mid_block_additional_residual": mid, "down_intrablock_additional_residuals": list(features)}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@torch.no_grad()
def test_shallow_path_adds_controlnet_and_adapter_inputs_as_diffusers_does(unets, family):
    """ControlNet residuals on every skip feature, T2I-Adapter features inside the first three down blocks: the
    shallow path with its own deep feature still gives diffusers' output, at every branch."""
    unet = unets[family]
    x, t, context, added = _inputs(unet, size=(10, 6))
    inputs = _control_inputs(unet, x, t, context, added)
    reference = unet(x, t, encoder_hidden_states=context, return_dict=False, **inputs())[0]
    plain = unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
    assert not torch.allclose(reference, plain)  # the inputs matter
    for branch in range(12 if family == "sd15" else 9):
        path = ShallowPath(unet, branch)
        full, deep = path.full(x, t, context, inputs())
        assert torch.equal(full, reference)
        assert torch.equal(path.shallow(x, t, context, inputs(), deep), reference), f"branch {branch}"


@torch.no_grad()
def test_interval_one_is_the_plain_unet_bit_for_bit(unets):
    unet = unets["sd15"]
    x, t, context, _ = _inputs(unet)
    conditioning = constant(StepConditioning(cond=context[:1], uncond=context[1:]))
    plain = GuidedUNet(unet, 7.0, conditioning)
    cached = GuidedUNet(unet, 7.0, conditioning, step_cache=StepCache(unet, StepCaching(1)))
    for call in range(3):
        assert torch.equal(cached(x[:1], t - 100 * call, call), plain(x[:1], t - 100 * call, call))
    assert cached.step_cache.shallow_calls == 0


@pytest.mark.parametrize(("calls", "interval"), [(7, 3), (6, 2), (5, 5)])
@torch.no_grad()
def test_full_unet_runs_once_every_interval_calls(calls, interval):
    unet = tiny_components("sd15")["unet"]
    counter = _deep_calls(unet)
    x, t, context, _ = _inputs(unet)
    guided = GuidedUNet(
        unet, 7.0, constant(StepConditioning(cond=context[:1], uncond=context[1:])),
        step_cache=StepCache(unet, StepCaching(interval)),
    )
    for call in range(calls):
        guided(x[:1], t, call)
    assert counter["full"] == math.ceil(calls / interval) == guided.step_cache.full_calls
    assert guided.step_cache.shallow_calls == calls - counter["full"]


@torch.no_grad()
def test_separate_cond_and_uncond_calls_each_reuse_their_own_features(unets):
    """Prompts of different token counts run as two UNet calls per step: each keeps its own deep feature."""
    unet = unets["sd15"]
    x, t, context, _ = _inputs(unet)
    cond, uncond = context[:1], torch.cat([context[1:], context[1:]], dim=1)  # 77 against 154 tokens
    guided = GuidedUNet(
        unet, 5.0, constant(StepConditioning(cond=cond, uncond=uncond)), step_cache=StepCache(unet, StepCaching(2))
    )
    guided(x[:1], t, 0)
    assert len(guided.step_cache.entries) == 2
    later = t - 50
    cached = guided(x[:1], later, 1)
    path = ShallowPath(unet, 0)
    _, deep_cond = path.full(x[:1], t, cond, {})
    _, deep_uncond = path.full(x[:1], t, uncond, {})
    cond_eps = path.shallow(x[:1], later, cond, {}, deep_cond)
    uncond_eps = path.shallow(x[:1], later, uncond, {}, deep_uncond)
    assert torch.equal(cached, uncond_eps + 5.0 * (cond_eps - uncond_eps))
    assert guided.calls == 4 and guided.step_cache.full_calls == 2


def test_cached_steps_never_wait_for_the_device():
    """As `tests/test_host_sync.py` counts the plain loop: the schedule is decided from host call counts."""
    unet = tiny_components("sd15")["unet"].eval().to(DEVICE)
    width = unet.config.cross_attention_dim
    conditioning = StepConditioning(cond=torch.zeros(2, 77, width, device=DEVICE),
                                    uncond=torch.zeros(2, 77, width, device=DEVICE))

    def waits(steps):
        guided = GuidedUNet(unet, 7.0, constant(conditioning), step_cache=StepCache(unet, StepCaching(3)))
        with torch.no_grad():
            counted = sampler_run_waits("DPM++ 2M", steps, guided)
        assert guided.step_cache.shallow_calls > 0
        return counted

    assert waits(4) == waits(7) == collections.Counter()


# --- the whole engine ----------------------------------------------------------------------------------------

PAYLOAD = {"prompt": "a red fox", "negative_prompt": "blur", "seed": 7, "steps": 6, "width": 64, "height": 64,
           "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def cached_engine(demo_models):
    return Engine.from_models_dir(demo_models, device="cpu", default_checkpoint="tiny-sd15",
                                  speedups=SpeedUps(deepcache_interval=3))


def test_txt2img_with_step_caching_stays_close_to_the_plain_image(cached_engine, sd15_engine):
    plain = np.asarray(sd15_engine.txt2img(PAYLOAD).images[0], dtype=np.float32)
    result = cached_engine.txt2img(PAYLOAD)
    cached = np.asarray(result.images[0], dtype=np.float32)
    difference = np.abs(cached - plain).mean()
    assert 0 < difference < 12, difference  # pixels change, moderately (tiny random weights exaggerate it)
    assert "DeepCache interval: 3, DeepCache branch: 0" in result.info
    again = np.asarray(cached_engine.txt2img(PAYLOAD).images[0], dtype=np.float32)
    np.testing.assert_array_equal(again, cached)  # nothing carried over from the previous request


def test_every_pass_starts_with_a_full_unet_call(cached_engine):
    """Base pass (5 calls) then hires pass: each starts afresh, ceil(calls / 3) full calls each (CFG batched);
    one schedule running on through both passes would make 3 full calls of 9, not 2 + 2."""
    unet = cached_engine.pipelines.get(cached_engine.catalog.find_checkpoint("tiny-sd15")).unet
    counter = _deep_calls(unet)
    payload = {**PAYLOAD, "steps": 5, "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 4,
               "denoising_strength": 0.5, "hr_upscaler": "Latent"}
    result = cached_engine.txt2img(payload)
    assert result.unet_calls == 5 + 4
    assert counter["full"] == 2 + 2
    assert "DeepCache interval: 3" in result.info


def test_the_refiner_starts_its_own_cache_at_the_switch(demo_models):
    """SDXL base then refiner in one pass: each UNet's first call is full, then one in three."""
    engine = Engine.from_models_dir(demo_models, device="cpu", default_checkpoint="tiny-sdxl",
                                    speedups=SpeedUps(deepcache_interval=3))
    counts = {}
    for name in ("tiny-sdxl", "tiny-sdxl_refiner"):
        unet = engine.pipelines.get(engine.catalog.find_checkpoint(name)).unet
        counts[name] = _deep_calls(unet)
        unet.conv_out.register_forward_hook(lambda module, args, output, c=counts[name]: c.update(["any"]))
    payload = {**PAYLOAD, "steps": 10, "refiner_checkpoint": "tiny-sdxl_refiner", "refiner_switch_at": 0.6}
    result = engine.txt2img(payload)
    base, refiner = counts["tiny-sdxl"], counts["tiny-sdxl_refiner"]
    assert base["any"] + refiner["any"] == result.unet_calls == 10 and refiner["any"] > 0
    assert base["full"] == math.ceil(base["any"] / 3) and refiner["full"] == math.ceil(refiner["any"] / 3)


def test_controlnet_units_run_with_step_caching(cached_engine):
    """ControlNet runs at every call; on cached calls its residuals reach the shallow skip features only."""
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(png, format="PNG")
    unit = {"module": "none", "model": "control_v11e_sd15_shuffle", "image": base64.b64encode(png.getvalue()).decode()}
    unet = cached_engine.pipelines.get(cached_engine.catalog.find_checkpoint("tiny-sd15")).unet
    counter = _deep_calls(unet)
    result = cached_engine.txt2img({**PAYLOAD, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert counter["full"] == 2 and result.unet_calls == 6
    info = json.loads(result.info)["infotexts"][0]
    assert "DeepCache interval: 3" in info and "ControlNet 0" in info


@pytest.mark.parametrize("model", ["ip-adapter_sd15", "ip-adapter-plus-face_sd15"])
@torch.no_grad()
def test_shallow_path_carries_ip_adapter_tokens(demo_models, model):
    """diffusers' `load_ip_adapter` of a demo IP-Adapter file (its projection and attention processors): the
    shallow path with its own deep feature still gives diffusers' output, and without the image tokens it
    would not (so the tokens reach the shallow layers)."""
    from diffusers import StableDiffusionPipeline

    from engine.control.models import read_ip_adapter
    from engine.resources.catalog import ModelCatalog

    components = tiny_components("sd15")
    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    weights = read_ip_adapter(ModelCatalog(demo_models).find_controlnet(model, "model").entry.path)
    pipe.load_ip_adapter(weights, subfolder="", weight_name="", image_encoder_folder=None)
    pipe.set_ip_adapter_scale(0.8)
    unet = pipe.unet
    x, t, context, _ = _inputs(unet)
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    if hasattr(projection, "image_embeds"):  # ImageProjection: one CLIP image embedding per row
        shape = (2, 1, projection.image_embeds.in_features)
    else:  # IPAdapterPlusImageProjection: CLIP's 257 hidden states per row
        shape = (2, 1, 257, projection.proj_in.in_features)
    inputs = {"added_cond_kwargs": {"image_embeds": [torch.randn(shape, generator=torch.Generator().manual_seed(3))]}}
    reference = unet(x, t, encoder_hidden_states=context, return_dict=False, **inputs)[0]
    for branch in (0, 4):
        path = ShallowPath(unet, branch)
        _, deep = path.full(x, t, context, inputs)
        assert torch.equal(path.shallow(x, t, context, inputs, deep), reference)
        other = {"added_cond_kwargs": {"image_embeds": [torch.full(shape, 5.0)]}}
        assert not torch.allclose(path.shallow(x, t, context, other, deep), reference)


def test_options_listing_shows_the_workers_pad_cond_uncond(demo_models):
    engine = Engine(Settings(models_dir=demo_models, device="cpu", speedups=SpeedUps(pad_cond_uncond=True)))
    assert engine.handle("GET", "/sdapi/v1/options", {})["pad_cond_uncond"] is True
    plain = Engine(Settings(models_dir=demo_models, device="cpu"))
    assert plain.handle("GET", "/sdapi/v1/options", {})["pad_cond_uncond"] is False


def test_a_branch_the_checkpoint_lacks_is_a_one_line_error_and_nothing_stays_loaded(demo_models):
    """DEEPCACHE_BRANCH is checked against each checkpoint's UNet as it loads: the client gets the setting's
    line (not an internal error), the checkpoint is not kept, and the worker serves the next job."""
    engine = Engine.from_models_dir(demo_models, device="cpu", default_checkpoint="tiny-sd15",
                                    speedups=SpeedUps(deepcache_interval=2, deepcache_branch=40))
    with pytest.raises(UnsupportedError, match=r"^DEEPCACHE_BRANCH: the worker's setting must be from 0 to \d+"):
        engine.txt2img(PAYLOAD)
    assert not engine.pipelines.resident()
    assert engine.handle("GET", "/sdapi/v1/sd-models", {})
