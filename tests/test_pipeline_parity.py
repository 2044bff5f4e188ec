"""Our one denoising loop reproduces diffusers' own pipelines on the same components, scheduler and noise.

The reference is diffusers' `StableDiffusionPipeline` / `StableDiffusionXLPipeline`, configured with the
scheduler settings that reproduce A1111's sigmas (reference/testing.md). Our images are truncated to uint8
as A1111 does; diffusers' float output is floored for the comparison, so agreement is within 1/255.
"""

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from engine.demo.tiny import tiny_components
from engine.generate import Models, generate
from engine.pipeline import A1111Pipeline
from engine.settings import Settings
from engine.translate import to_plan
from engine.wire.txt2img import Txt2ImgRequest


SEED = 1234
PIPELINES = {"sd15": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
# A1111 sampler → the diffusers scheduler settings that give A1111's sigmas and noise.
REFERENCE_SCHEDULERS = {
    "DPM++ 2M Karras": lambda config, seed: DPMSolverMultistepScheduler.from_config(
        config,
        use_karras_sigmas=True,
        timestep_spacing="linspace",
        algorithm_type="dpmsolver++",
        solver_order=2,
        final_sigmas_type="zero",
        lower_order_final=True,
    ),
    "DPM++ SDE Karras": lambda config, seed: DPMSolverSDEScheduler.from_config(
        config, use_karras_sigmas=True, timestep_spacing="linspace", noise_sampler_seed=seed
    ),
}


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def family(request):
    return request.param


def run_both(family: str, sampler: str, negative_prompt: str, steps: int = 5):
    components = tiny_components(family, seed=0)
    ours = A1111Pipeline(
        **{k: components.get(k) for k in A1111Pipeline._get_signature_keys(A1111Pipeline)[0]}
    )
    payload = {
        "prompt": "a red fox in the snow",
        "negative_prompt": negative_prompt,
        "seed": SEED,
        "steps": steps,
        "cfg_scale": 5,
        "width": 64,
        "height": 64,
        "sampler_name": sampler,
    }
    plan = to_plan(Txt2ImgRequest.parse(payload), Settings())
    output = generate(plan, Models(ours))

    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    reference = PIPELINES[family](**components, **(extra if family == "sd15" else {}))
    reference.scheduler = REFERENCE_SCHEDULERS[sampler](components["scheduler"].config, SEED)
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(SEED))
    expected = reference(
        prompt=payload["prompt"],
        # diffusers zeroes an SDXL negative only for None; A1111 zeroes an empty one.
        negative_prompt=negative_prompt or None,
        num_inference_steps=steps,
        guidance_scale=5.0,
        height=64,
        width=64,
        latents=latents,
        output_type="np",
    ).images[0]
    return np.asarray(output.images[0]).astype(int), (expected * 255).astype(int), output.unet_calls


@pytest.mark.parametrize("sampler", list(REFERENCE_SCHEDULERS))
@pytest.mark.parametrize("negative_prompt", ["", "blurry, low quality"])
def test_images_match_diffusers_pipeline(family, sampler, negative_prompt):
    ours, expected, _ = run_both(family, sampler, negative_prompt)
    assert ours.shape == expected.shape == (64, 64, 3)
    assert np.abs(ours - expected).max() <= 1


def test_dpmpp_sde_makes_2n_minus_1_unet_calls():
    _, _, calls = run_both("sd15", "DPM++ SDE Karras", "", steps=6)
    assert calls == 2 * 6 - 1
