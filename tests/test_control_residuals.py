"""The control stack: guidance clock, control-mode scales, cond/uncond rows, summed units, and a small CFG
driver running the real diffusers UNet2DConditionModel + ControlNetModel (tiny SDXL shapes)."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from engine.control.request import ControlRequest, MapUnit
from engine.control.residuals import ControlNetPass, ControlStack, GuidanceClock, RowLayout, soft_scales
from engine.control.units import parse_controlnet_args


# The reference's table of sd-webui-controlnet's soft factors for SDXL (9 down residuals, then the mid one).
SDXL_SOFT = (0.0994, 0.1205, 0.1461, 0.1770, 0.2146, 0.2601, 0.3153, 0.3822, 0.4633, 0.5615)
SIZE = 32  # pixels; latents are 1/8 of that (4 × 4), the hint is at pixel size


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU spinning OpenMP threads cost 10-100×."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def unet():
    from engine.demo.tiny import tiny_components

    return tiny_components("sdxl", seed=0)["unet"]


def _controlnet(unet, seed: int):
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
        with torch.no_grad():
            for parameter in controlnet.parameters():  # the zero convolutions too, so outputs are not zero
                parameter.add_(torch.randn_like(parameter) * 0.05)
    return controlnet.eval()


@pytest.fixture(scope="module")
def controlnets(unet):
    return _controlnet(unet, 1), _controlnet(unet, 2)


def _inputs(rows: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, SIZE // 8, SIZE // 8, generator=generator)
    context = torch.randn(rows, 77, 80, generator=generator)
    added = {"text_embeds": torch.randn(rows, 48, generator=generator),
             "time_ids": torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * rows, dtype=torch.float32)}
    hint = torch.rand(1, 3, SIZE, SIZE, generator=generator)
    return x, context, added, hint


def _direct(controlnet, x, t, context, added, hint, scale=1.0):
    """diffusers' own ControlNet call: every residual × conditioning_scale."""
    down, mid = controlnet(x, t, encoder_hidden_states=context, controlnet_cond=hint.expand(len(x), -1, -1, -1),
                           conditioning_scale=scale, added_cond_kwargs=added, return_dict=False)
    return [*down, mid]


def _pass(controlnet, hint, weight=1.0, mode=(False, False), window=(0.0, 1.0)):
    soft, cond_only = mode
    return ControlNetPass(controlnet, hint, weight, *window, soft=soft, cond_only=cond_only)


BALANCED, PROMPT, CONTROL = (False, False), (True, False), (True, True)


def test_soft_scales_are_a1111s():
    np.testing.assert_allclose(soft_scales(10), SDXL_SOFT, atol=1e-4)
    assert soft_scales(13)[-1] == 1.0  # SD1.5: the mid residual keeps the full weight


@pytest.mark.parametrize(
    ("clock", "expected"),
    [
        # First order: a call sees the step of the last sampler callback (k-diffusion calls it after the model).
        (GuidanceClock(4, 1), [0, 0, 1, 2]),
        # Second order (DPM++ SDE: two calls per step, one in the last): the second call of a step sees it.
        (GuidanceClock(3, 2), [0, 0, 0, 1, 1]),
    ],
)
def test_guidance_clock_follows_a1111s_sampling_step(clock, expected):
    assert [clock.sampling_step(call) for call in range(len(expected))] == expected
    assert clock.fraction(len(expected) - 1) == expected[-1] / clock.steps


def test_row_layouts():
    layout = RowLayout.cond_then_uncond([0, 0, 1], 2)  # image 0 has two AND sub-prompts
    assert layout.images == (0, 0, 1, 0, 1) and layout.cond == (True, True, True, False, False)
    assert RowLayout.uniform([0, 1], cond=False).cond == (False, False) and len(layout) == 5


@torch.no_grad()
def test_balanced_is_the_weight_on_every_residual(unet, controlnets):
    x, context, added, hint = _inputs(2)
    t = torch.tensor(500.0)
    stack = ControlStack([_pass(controlnets[0], hint, 0.7, BALANCED)], None, GuidanceClock(10))
    inputs = stack.unet_inputs(x, t, 0, context, added, RowLayout.cond_then_uncond([0], 1))
    reference = _direct(controlnets[0], x, t, context, added, hint, scale=0.7)
    ours = [*inputs["down_block_additional_residuals"], inputs["mid_block_additional_residual"]]
    assert len(ours) == 10  # tiny SDXL: 9 down residuals + mid, like the real one
    for got, expected in zip(ours, reference, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert inputs["added_cond_kwargs"] is added


@torch.no_grad()
def test_my_prompt_is_more_important_scales_each_block(unet, controlnets):
    x, context, added, hint = _inputs(2)
    t = torch.tensor(500.0)
    stack = ControlStack([_pass(controlnets[0], hint, 0.5, PROMPT)], None, GuidanceClock(10))
    inputs = stack.unet_inputs(x, t, 0, context, added, RowLayout.cond_then_uncond([0], 1))
    ours = [*inputs["down_block_additional_residuals"], inputs["mid_block_additional_residual"]]
    raws = _direct(controlnets[0], x, t, context, added, hint)
    for index, (got, raw) in enumerate(zip(ours, raws, strict=True)):
        torch.testing.assert_close(got, raw * 0.5 * 0.825 ** (12 - index), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_controlnet_is_more_important_leaves_the_uncond_rows_alone(unet, controlnets):
    x, context, added, hint = _inputs(4)
    t = torch.tensor(500.0)
    rows = RowLayout.cond_then_uncond([0, 1], 2)
    stack = ControlStack([_pass(controlnets[0], hint, 1.0, CONTROL)], None, GuidanceClock(10))
    inputs = stack.unet_inputs(x, t, 0, context, added, rows)
    ours = [*inputs["down_block_additional_residuals"], inputs["mid_block_additional_residual"]]
    cond_added = {key: value[:2] for key, value in added.items()}
    reference = _direct(controlnets[0], x[:2], t, context[:2], cond_added, hint)
    for index, (got, raw) in enumerate(zip(ours, reference, strict=True)):
        assert got[2:].abs().max() == 0
        torch.testing.assert_close(got[:2], raw * 0.825 ** (12 - index), rtol=1e-5, atol=1e-6)
    # A call with only uncond rows (separate CFG passes) gets no residuals at all.
    alone = stack.unet_inputs(x[2:], t, 0, context[2:], {k: v[2:] for k, v in added.items()},
                              RowLayout.uniform([0, 1], cond=False))
    assert "down_block_additional_residuals" not in alone


@torch.no_grad()
def test_units_are_summed_and_windows_respected(unet, controlnets):
    x, context, added, hint = _inputs(2)
    t = torch.tensor(500.0)
    rows = RowLayout.cond_then_uncond([0], 1)
    first = _pass(controlnets[0], hint, 0.6, BALANCED, window=(0.0, 0.5))
    second = _pass(controlnets[1], hint.flip(-1), 0.3, PROMPT, window=(0.25, 1.0))
    stack = ControlStack([first, second], None, GuidanceClock(4))
    singles = [ControlStack([unit], None, GuidanceClock(4)) for unit in (first, second)]
    # Calls of a 4-step first-order pass see fractions 0, 0, 0.25, 0.5: call 1 has only the first unit,
    # call 2 both.
    for call, active in ((1, [True, False]), (2, [True, True])):
        both = stack.unet_inputs(x, t, call, context, added, rows)
        parts = [single.unet_inputs(x, t, call, context, added, rows) for single in singles]
        assert ["mid_block_additional_residual" in part for part in parts] == active
        expected = sum(part["mid_block_additional_residual"] for part in parts if "mid_block_additional_residual" in part)
        torch.testing.assert_close(both["mid_block_additional_residual"], expected)
    late = ControlStack([first], None, GuidanceClock(4)).unet_inputs(x, t, 5, context, added, rows)
    assert "mid_block_additional_residual" not in late  # fraction 0.75 > guidance_end 0.5


@torch.no_grad()
def test_cfg_driver_with_the_real_unet_matches_a_hand_wired_reference(unet, controlnets):
    """Three Euler-style steps of CFG, the UNet fed by `unet_inputs` exactly as GuidedUNet will; the reference
    wires diffusers' ControlNet into the UNet by hand (weight as conditioning_scale, window by step)."""
    x, context, added, hint = _inputs(2, seed=3)
    latents = x[:1].clone()
    rows = RowLayout.cond_then_uncond([0], 1)
    stack = ControlStack([_pass(controlnets[0], hint, 0.8, BALANCED, window=(0.0, 0.3))], None, GuidanceClock(3))
    timesteps = torch.tensor([900.0, 600.0, 300.0])

    def step(latents, call, use_stack):
        batch = torch.cat([latents, latents])
        t = timesteps[call]
        if use_stack:
            kwargs = stack.unet_inputs(batch, t, call, context, added, rows)
        else:
            kwargs = {"added_cond_kwargs": added}
            if call <= 1:  # sampling steps seen: 0, 0, 1 → fractions 0, 0, 0.33: active at calls 0 and 1 only
                residuals = _direct(controlnets[0], batch, t, context, added, hint, scale=0.8)
                kwargs |= {"down_block_additional_residuals": tuple(residuals[:-1]),
                           "mid_block_additional_residual": residuals[-1]}
        eps = unet(batch, t, encoder_hidden_states=context, return_dict=False, **kwargs)[0]
        guided = eps[1:] + 5.0 * (eps[:1] - eps[1:])
        return latents - 0.1 * guided

    ours, reference = latents, latents
    for call in range(3):
        ours, reference = step(ours, call, True), step(reference, call, False)
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    plain = unet(torch.cat([latents, latents]), timesteps[0], encoder_hidden_states=context,
                 added_cond_kwargs=added, return_dict=False)[0]
    controlled = unet(torch.cat([latents, latents]), timesteps[0], encoder_hidden_states=context, return_dict=False,
                      **stack.unet_inputs(torch.cat([latents, latents]), timesteps[0], 0, context, added, rows))[0]
    assert (plain - controlled).abs().max() > 1e-3  # the control does change the prediction


def _canny_unit(control_mode: str = "Balanced"):
    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (9, 9, 9)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    (unit,) = parse_controlnet_args({"controlnet": {"args": [
        {"module": "canny", "model": "canny", "image": image, "control_mode": control_mode, "weight": 0.5}]}})
    return unit


@pytest.mark.parametrize(
    ("control_mode", "base", "hires"),
    [("Balanced", (False, False), (True, False)),  # canny: soft in the hires pass (sd-webui-controlnet)
     ("My prompt is more important", (True, False), (True, False)),
     ("ControlNet is more important", (True, True), (True, True))],
)
def test_request_builds_each_pass_with_the_unit_settings(unet, controlnets, control_mode, base, hires):
    unit = _canny_unit(control_mode)
    detected = np.zeros((SIZE // 2, SIZE // 2, 3), np.uint8)
    detected[:, ::4] = 255
    request = ControlRequest([MapUnit(unit, controlnets[0], detected)], None, [], [])
    first = request.stack_for_pass(unet, SIZE, SIZE, steps=4)
    second = request.stack_for_pass(unet, 2 * SIZE, SIZE, steps=2, second_order=True, hires=True)
    assert [(p.soft, p.cond_only) for p in first.controlnets] == [base]
    assert [(p.soft, p.cond_only) for p in second.controlnets] == [hires]
    assert first.controlnets[0].hint.shape == (1, 3, SIZE, SIZE) and first.controlnets[0].weight == 0.5
    assert second.controlnets[0].hint.shape == (1, 3, SIZE, 2 * SIZE)
    assert float(first.controlnets[0].hint.max()) == 1.0 and float(first.controlnets[0].hint.min()) == 0.0
    assert second.clock == GuidanceClock(2, 2) and first.ip_adapter is None
