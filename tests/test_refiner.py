"""The SDXL refiner as A1111 runs it (`sd_samplers_common.apply_refiner`), on the tiny demo SDXL + refiner.

References: diffusers' own two-checkpoint pipeline ("ensemble of expert denoisers": `StableDiffusionXLPipeline`
with `denoising_end`, then `StableDiffusionXLImg2ImgPipeline` with `denoising_start`) for the pixels, and
k-diffusion's samplers and denoiser for the noise levels at which A1111's formula switches:
progress = (999 − argmin |σ_model − σ|) / 1000, the refiner taking over at the first call with
progress ≥ refiner_switch_at (by model calls / counted steps with `refiner_switch_by_sample_steps`).
"""

import json
import math

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

from engine import Engine
from engine.demo.tiny import tiny_components
from engine.errors import NotFoundError, RequestError, UnsupportedError
from engine.generate import Models, generate
from engine.pipeline import A1111Pipeline
from engine.prompts import extract_extra_networks, parse_prompt_attention
from engine.prompts.conditioning import build_conditioning
from engine.prompts.options import PassShape, PromptOptions
from engine.settings import Settings
from engine.translate import to_plan
from engine.translate.refiner import parse_refiner_script_args
from engine.wire.txt2img import Txt2ImgRequest
from tests.test_sampler_parity import KEXT, KS, a1111_alphas_cumprod


SEED = 77
BASE = {"prompt": "a red fox in the snow", "negative_prompt": "blurry", "seed": SEED, "cfg_scale": 5,
        "width": 64, "height": 64, "sampler_name": "Euler", "steps": 10}
REFINER = "tiny-sdxl_refiner"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared CPU
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine(demo_models):
    return Engine.from_models_dir(demo_models, device="cpu", default_checkpoint="tiny-sdxl")


def pipeline(family: str) -> A1111Pipeline:
    components = tiny_components(family, seed=0)
    return A1111Pipeline(**{k: components.get(k) for k in A1111Pipeline._get_signature_keys(A1111Pipeline)[0]})


class UNetCalls:
    """Forward pre-hooks on each checkpoint's UNet: which one ran each model call, with what inputs."""

    def __init__(self, **unets):
        self.calls: list[tuple[str, float, dict]] = []
        self.handles = [
            unet.register_forward_pre_hook(self._recorder(name), with_kwargs=True) for name, unet in unets.items()
        ]

    def _recorder(self, name):
        def record(module, args, kwargs):
            self.calls.append((name, float(torch.as_tensor(args[1]).max()), kwargs))

        return record

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def snapshot(*modules) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in module.state_dict().items()} for module in modules]


def assert_unchanged(before, modules):
    for saved, module in zip(before, modules, strict=True):
        now = module.state_dict()
        assert saved.keys() == now.keys()
        assert all(torch.equal(saved[k], now[k]) for k in saved)


# --- the switch point: A1111's formula on k-diffusion's noise levels ------------------------------------------

def kdiffusion_levels(sampler: str, steps: int) -> list[float]:
    """The σ k-diffusion's sampler passes to the denoiser at each model call (what A1111's CFGDenoiser sees)."""
    model_sigmas = ((1 - a1111_alphas_cumprod()) / a1111_alphas_cumprod()) ** 0.5
    schedule = KEXT.DiscreteSchedule(model_sigmas, quantize=False)
    if sampler == "Euler":
        sigmas = schedule.get_sigmas(steps)
    else:
        sigmas = KS.get_sigmas_karras(steps, schedule.sigma_min.item(), schedule.sigma_max.item(), rho=7.0)
    seen = []

    def model(x, sigma, **kwargs):
        seen.append(float(sigma.max()))
        return torch.zeros_like(x)

    x = torch.zeros(1, 4, 8, 8)
    functions = {"Euler": KS.sample_euler, "DPM++ 2M": KS.sample_dpmpp_2m, "DPM++ SDE": KS.sample_dpmpp_sde}
    functions[sampler](model, x, sigmas, disable=True)
    return seen, model_sigmas


def a1111_switch_call(levels, model_sigmas, switch_at: float) -> int:
    """A1111 `apply_refiner`: the first call whose (999 − nearest timestep) / 1000 reaches switch_at."""
    for call, sigma in enumerate(levels):
        timestep = int(torch.argmin((model_sigmas - sigma).abs()))
        if (999 - timestep) / 1000 >= switch_at:
            return call
    return len(levels)


@pytest.mark.parametrize(
    ("sampler", "scheduler", "steps", "switch_at"),
    [("Euler", None, 10, 0.8), ("DPM++ 2M", "Karras", 7, 0.5), ("DPM++ SDE", "Karras", 4, 0.3)],
)
def test_unet_calls_before_and_after_the_switch_follow_a1111(engine, sampler, scheduler, steps, switch_at):
    base_pipe = engine.pipelines.get(engine.catalog.find_checkpoint("tiny-sdxl"))
    refiner_pipe = engine.pipelines.get(engine.catalog.find_checkpoint(REFINER))
    modules = (base_pipe.unet, base_pipe.vae, base_pipe.text_encoder, base_pipe.text_encoder_2, refiner_pipe.unet)
    before = snapshot(*modules)
    payload = {**BASE, "sampler_name": sampler, "scheduler": scheduler, "steps": steps,
               "refiner_checkpoint": REFINER, "refiner_switch_at": switch_at}
    with UNetCalls(base=base_pipe.unet, refiner=refiner_pipe.unet) as calls:
        result = engine.txt2img(payload)
    levels, model_sigmas = kdiffusion_levels(sampler, steps)
    switch = a1111_switch_call(levels, model_sigmas, switch_at)
    assert 0 < switch < len(levels)
    assert calls.names() == ["base"] * switch + ["refiner"] * (len(levels) - switch)
    assert result.unet_calls == len(levels)
    # The refiner's own conditioning: OpenCLIP-G alone (48 wide), its aesthetic scores in the added ids.
    _, _, kwargs = calls.calls[-1]
    assert kwargs["encoder_hidden_states"].shape[-1] == 48
    time_ids = kwargs["added_cond_kwargs"]["time_ids"]
    assert time_ids.tolist() == [[64, 64, 0, 0, 6.0], [64, 64, 0, 0, 2.5]]  # cond row, then uncond row
    assert calls.calls[0][2]["encoder_hidden_states"].shape[-1] == 80  # the base: CLIP-L + OpenCLIP-G
    # Both checkpoints' weights are exactly as loaded.
    assert_unchanged(before, modules)
    infotext = json.loads(result.info)["infotexts"][0]
    title = engine.catalog.find_checkpoint(REFINER).short_title
    assert f"Refiner: {title}, Refiner switch at: {switch_at}" in infotext


def test_switch_by_sampling_steps_counts_model_calls(engine):
    base_pipe = engine.pipelines.get(engine.catalog.find_checkpoint("tiny-sdxl"))
    refiner_pipe = engine.pipelines.get(engine.catalog.find_checkpoint(REFINER))
    payload = {**BASE, "sampler_name": "DPM++ SDE", "scheduler": "Karras", "steps": 4,
               "refiner_checkpoint": REFINER, "refiner_switch_at": 0.55,
               "override_settings": {"refiner_switch_by_sample_steps": True}}
    with UNetCalls(base=base_pipe.unet, refiner=refiner_pipe.unet) as calls:
        result = engine.txt2img(payload)
    # A1111 counts DPM++ SDE (second order) as 2 × 4 = 8 steps; it makes 2 × 4 − 1 = 7 calls.
    switch = math.ceil(0.55 * 8)
    assert calls.names() == ["base"] * switch + ["refiner"] * (7 - switch)
    assert "Refiner switch by sampling steps: True" in json.loads(result.info)["infotexts"][0]


def test_timestep_samplers_switch_on_the_truncated_timestep(engine):
    base_pipe = engine.pipelines.get(engine.catalog.find_checkpoint("tiny-sdxl"))
    refiner_pipe = engine.pipelines.get(engine.catalog.find_checkpoint(REFINER))
    payload = {**BASE, "sampler_name": "DDIM", "steps": 6, "refiner_checkpoint": REFINER, "refiner_switch_at": 0.5}
    with UNetCalls(base=base_pipe.unet, refiner=refiner_pipe.unet) as calls:
        engine.txt2img(payload)
    progress = [((999 - int(t)) / 1000, name) for name, t, _ in calls.calls]
    assert [name for p, name in progress] == ["base" if p < 0.5 else "refiner" for p, _ in progress]
    assert calls.names()[0] == "base" and calls.names()[-1] == "refiner"


# --- pixels: diffusers' base + refiner pipelines -------------------------------------------------------------

def test_refined_image_matches_diffusers_ensemble_of_experts():
    """Euler keeps no state between steps, so A1111's hand-over equals diffusers' denoising_end/_start split:
    at switch 0.5 both run t = 999…555 on the base and t = 444…0 on the refiner (moving the switch one step
    changes these pixels by 7/255, leaving the refiner out by 16/255)."""
    steps, switch_at = 10, 0.5
    base, refiner = pipeline("sdxl"), pipeline("sdxl_refiner")
    plan = to_plan(Txt2ImgRequest.parse({**BASE, "refiner_checkpoint": REFINER, "refiner_switch_at": switch_at}),
                   Settings())
    output = generate(plan, Models(base, refiner=refiner, refiner_title=REFINER))
    assert output.extra_params["Refiner"] == REFINER

    def euler(config):
        return EulerDiscreteScheduler.from_config(config, timestep_spacing="linspace", interpolation_type="linear")

    base_components, refiner_components = tiny_components("sdxl"), tiny_components("sdxl_refiner")
    reference_base = StableDiffusionXLPipeline(**base_components)
    reference_base.scheduler = euler(base_components["scheduler"].config)
    reference_refiner = StableDiffusionXLImg2ImgPipeline(
        **refiner_components, text_encoder=None, tokenizer=None, requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )
    reference_refiner.scheduler = euler(refiner_components["scheduler"].config)
    common = {"prompt": BASE["prompt"], "negative_prompt": BASE["negative_prompt"], "guidance_scale": 5.0,
              "num_inference_steps": steps}
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(SEED))
    handed_over = reference_base(**common, height=64, width=64, latents=latents, denoising_end=switch_at,
                                 output_type="latent").images
    expected = reference_refiner(**common, image=handed_over, denoising_start=switch_at, output_type="np").images[0]
    ours = np.asarray(output.images[0]).astype(int)
    assert np.abs(ours - (expected * 255).astype(int)).max() <= 1
    assert output.unet_calls == steps


def test_refiner_conditioning_matches_diffusers_refiner_pipeline():
    refiner = pipeline("sdxl_refiner")
    conditioning = build_conditioning(
        refiner, ["a red fox"], ["blurry"], PassShape(64, 96, 10), PromptOptions(), parse=parse_prompt_attention
    )(0)
    reference = StableDiffusionXLImg2ImgPipeline(
        **tiny_components("sdxl_refiner"), text_encoder=None, tokenizer=None, requires_aesthetics_score=True
    )
    embeds, negative_embeds, pooled, negative_pooled = reference.encode_prompt(
        "a red fox", negative_prompt="blurry", device="cpu", do_classifier_free_guidance=True
    )
    time_ids, negative_time_ids = reference._get_add_time_ids(
        (64, 96), (0, 0), (64, 96), 6.0, 2.5, (64, 96), (0, 0), (64, 96), torch.float32, 48
    )
    torch.testing.assert_close(conditioning.cond, embeds)
    torch.testing.assert_close(conditioning.uncond, negative_embeds)
    torch.testing.assert_close(conditioning.cond_added["text_embeds"], pooled)
    torch.testing.assert_close(conditioning.uncond_added["text_embeds"], negative_pooled)
    assert torch.equal(conditioning.cond_added["time_ids"], time_ids)
    assert torch.equal(conditioning.uncond_added["time_ids"], negative_time_ids)


# --- hires fix after a refined first pass --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("passes", "first", "second"),
    [("second pass", ["base"], ["base", "refiner"]), ("first pass", ["base", "refiner"], ["base"]),
     ("both passes", ["base", "refiner"], ["base", "refiner"])],
)
def test_hires_fix_refines_the_passes_a1111_names(engine, passes, first, second):
    base_pipe = engine.pipelines.get(engine.catalog.find_checkpoint("tiny-sdxl"))
    refiner_pipe = engine.pipelines.get(engine.catalog.find_checkpoint(REFINER))
    payload = {**BASE, "steps": 6, "refiner_checkpoint": REFINER, "refiner_switch_at": 0.6, "enable_hr": True,
               "hr_scale": 1.5, "denoising_strength": 0.7, "hr_second_pass_steps": 5,
               "override_settings": {"hires_fix_refiner_pass": passes}}
    with UNetCalls(base=base_pipe.unet, refiner=refiner_pipe.unet) as calls:
        result = engine.txt2img(payload)
    names = calls.names()
    first_pass, second_pass = names[:6], names[6:]
    assert len(second_pass) == 5
    # Each pass starts on its own checkpoint (A1111 reloads the base before hires fix) and switches at most once.
    assert list(dict.fromkeys(first_pass)) == first
    assert list(dict.fromkeys(second_pass)) == second
    assert first_pass == sorted(first_pass) and second_pass == sorted(second_pass)
    infotext = json.loads(result.info)["infotexts"][0]
    assert ("Hires refiner: " + passes in infotext) == (passes != "second pass")
    assert result.images[0].size == (96, 96)


def test_refiner_that_never_switches_adds_nothing(engine):
    result = engine.txt2img({**BASE, "steps": 3, "refiner_checkpoint": REFINER, "refiner_switch_at": 1.0})
    assert "Refiner" not in json.loads(result.info)["infotexts"][0]


# --- request forms and errors ----------------------------------------------------------------------------------

def test_builtin_refiner_script_args_are_accepted(engine):
    payload = {**BASE, "steps": 4, "alwayson_scripts": {"Refiner": {"args": [True, REFINER, 0.5]}}}
    result = engine.txt2img(payload)
    infotext = json.loads(result.info)["infotexts"][0]
    assert "Refiner switch at: 0.5" in infotext
    assert any("alwayson_scripts.Refiner" in warning for warning in result.warnings)


@pytest.mark.parametrize(
    ("args", "expected"),
    [([True, "r", 0.7], ("r", 0.7)), ([True, "r"], ("r", 0.8)), ([False, "r", 0.7], (None, None)),
     ([True, "None", 0.7], (None, None)), ([True, "", 0.5], (None, None)), ([], (None, None))],
)
def test_refiner_script_args_read_as_a1111_setup(args, expected):
    assert parse_refiner_script_args(args, "alwayson_scripts.Refiner.args") == expected


@pytest.mark.parametrize("args", [[1, "r", 0.5], [True, 3, 0.5], [True, "r", "high"], [True, "r", 0.5, 4], "r"])
def test_bad_refiner_script_args_name_the_field(args):
    with pytest.raises(RequestError, match=r"alwayson_scripts\.Refiner\.args"):
        parse_refiner_script_args(args, "alwayson_scripts.Refiner.args")


@pytest.mark.parametrize(
    ("change", "error", "field"),
    [({"refiner_checkpoint": "no-such-model"}, NotFoundError, "refiner_checkpoint"),
     ({"override_settings": {"hires_fix_refiner_pass": "third pass"}}, RequestError, "hires_fix_refiner_pass")],
)
def test_bad_refiner_requests_are_clear_errors(engine, change, error, field):
    with pytest.raises(error, match=field):
        engine.txt2img({**BASE, "refiner_checkpoint": REFINER, **change})


def test_a_refiner_from_another_latent_space_is_refused(sd15_engine):
    with pytest.raises(UnsupportedError, match="refiner_checkpoint"):
        sd15_engine.txt2img({**BASE, "steps": 2, "refiner_checkpoint": REFINER, "refiner_switch_at": 0.5})


def test_refiner_runs_without_the_request_loras_even_on_a_shared_text_encoder(demo_models, tmp_path):
    """The refiner shares tiny-sdxl's OpenCLIP-G (as the real ones share it). A1111's LoRA keys do not fit the
    refiner's layers, so it runs without them: its conditioning is the one encoded with no LoRA at all."""
    from tests.test_lora import FULL_LORA, write_kohya_lora

    for folder in demo_models.iterdir():
        (tmp_path / folder.name).symlink_to(folder, target_is_directory=folder.is_dir())
    write_kohya_lora(tmp_path / "LyCORIS" / "xl_style.safetensors", FULL_LORA["sdxl"], seed=4)
    engine = Engine.from_models_dir(tmp_path, device="cpu", default_checkpoint="tiny-sdxl")
    base_pipe = engine.pipelines.get(engine.catalog.find_checkpoint("tiny-sdxl"))
    refiner_pipe = engine.pipelines.get(engine.catalog.find_checkpoint(REFINER))
    assert refiner_pipe.text_encoder_2 is base_pipe.text_encoder_2  # one module, resident once
    modules = (base_pipe.unet, base_pipe.text_encoder, base_pipe.text_encoder_2, refiner_pipe.unet)
    before = snapshot(*modules)
    payload = {**BASE, "prompt": "<lora:xl_style:1> a red fox", "steps": 4, "refiner_checkpoint": REFINER,
               "refiner_switch_at": 0.5}
    with UNetCalls(base=base_pipe.unet, refiner=refiner_pipe.unet) as calls:
        result = engine.txt2img(payload)
    assert "Lora hashes: \"xl_style: " in json.loads(result.info)["infotexts"][0]
    assert calls.names() == ["base", "base", "refiner", "refiner"]
    prompt, _ = extract_extra_networks(payload["prompt"])
    plain = build_conditioning(refiner_pipe, [prompt], ["blurry"], PassShape(64, 64, 4), PromptOptions(),
                               parse=parse_prompt_attention)(2)
    refiner_context = calls.calls[2][2]["encoder_hidden_states"]
    assert torch.equal(refiner_context, torch.cat([plain.cond, plain.uncond]))
    assert_unchanged(before, modules)
