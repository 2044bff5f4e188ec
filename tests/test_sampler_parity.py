"""Every A1111 sampler and schedule type against what A1111 runs, on a tiny random UNet with CFG 5, batch 2.

References: k-diffusion's own samplers (the version installed for tests) wrapped as A1111 wraps the UNet — the
CompVisDenoiser with float64-built ᾱ, `randn_like` redirected to the per-image generators, Brownian trees
seeded with the image seeds — on sigmas built here from k-diffusion's functions and A1111's formulas. The
matrix puts CFG on ε, where the engine's loop combines it, and must agree to 1e-4 (it is bit-identical);
`test_a1111_denoised_space_cfg_differs_only_by_rounding` checks A1111's own CFG placement on the denoised
latents. DDIM and PLMS: diffusers' DDIMScheduler / PNDMScheduler stepping A1111's timesteps. Restart, LCM and
UniPC are A1111 code, not k-diffusion: their references are loop-form transcriptions of A1111's functions
below, driving k-diffusion's denoiser.
"""

import importlib
import importlib.util
import inspect
import math
import sys
import types

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler, UNet2DConditionModel
from scipy import stats

from engine.samplers import SAMPLERS, SCHEDULES, resolve_sampler
from engine.sampling.loop import denoise
from engine.sampling.noise import ImageNoise
from engine.sampling.schedulers import (
    SIGMA_ALGORITHMS,
    SOLVER_ALGORITHMS,
    TIMESTEP_ALGORITHMS,
    SamplerOptions,
    prepare_sampler,
)


pytestmark = [
    pytest.mark.filterwarnings("ignore:Should have:UserWarning"),  # torchsde clamps query times, as in A1111
    pytest.mark.filterwarnings("ignore:To copy construct:UserWarning"),  # k-diffusion given tensor sigmas
]

CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "timestep_spacing": "leading",
    "steps_offset": 1,
}
SEEDS = [1234, 1235]
SHAPE = (4, 8, 8)
CFG = 5.0
TOLERANCE = 1e-4
STEPS = 4
MATRIX_STEPS = 3  # sampler x schedule matrix: enough for every branch but LMS's 4th order (tested separately)


def import_kdiffusion():
    """k-diffusion's sampling/external modules without its heavy package __init__."""
    if "k_diffusion.sampling" not in sys.modules:
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(importlib.util.find_spec("k_diffusion").submodule_search_locations)
        sys.modules["k_diffusion"] = package
    return importlib.import_module("k_diffusion.sampling"), importlib.import_module("k_diffusion.external")


KS, KEXT = import_kdiffusion()


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend
    yield
    torch.set_num_threads(threads)


def a1111_alphas_cumprod():
    """A1111 (ldm `register_schedule`): float64 betas and cumprod, stored as float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.tensor(np.cumprod(1.0 - betas.numpy()), dtype=torch.float32)


class TinyModel:
    """A seeded tiny UNet with fixed prompt embeddings; counts CFG evaluations (one batched UNet call)."""

    def __init__(self):
        torch.manual_seed(0)
        self.unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=8,
            attention_head_dim=2,
            sample_size=8,
        ).eval()
        generator = torch.Generator().manual_seed(1)
        self.cond = torch.randn(2, 7, 32, generator=generator)
        self.uncond = torch.randn(2, 7, 32, generator=generator)
        self.alphas_cumprod = a1111_alphas_cumprod()
        self.calls = 0

    @torch.no_grad()
    def both(self, x_in, t):
        """(cond, uncond) outputs for a batch, as one UNet call of twice the batch."""
        self.calls += 1
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(x_in.shape[0])
        out = self.unet(
            torch.cat([x_in, x_in]),
            torch.cat([t, t]),
            encoder_hidden_states=torch.cat([self.cond, self.uncond]),
        ).sample
        return out.chunk(2)

    def guided(self, x_in, t, call_index=None):
        """CFG on ε, as the engine's loop combines it."""
        cond, uncond = self.both(x_in, t)
        return uncond + (cond - uncond) * CFG


class GuidedEps:
    """The CFG-guided ε model behind k-diffusion's wrapper (`apply_model` is what CompVisDenoiser calls)."""

    def __init__(self, model):
        self.model = model
        self.alphas_cumprod = model.alphas_cumprod

    def apply_model(self, x, t, cond=None):
        return self.model.guided(x, t)


class CondUncondEps:
    """The UNet's cond and uncond ε for a doubled batch, as A1111 batches them for its CFGDenoiser."""

    def __init__(self, model):
        self.model = model
        self.alphas_cumprod = model.alphas_cumprod

    def apply_model(self, x, t, cond=None):
        half = len(x) // 2
        return torch.cat(self.model.both(x[:half], t[:half]))


class DenoisedSpaceCfg:
    """A1111 `CFGDenoiser`: wrap cond and uncond separately, then guide the denoised latents."""

    def __init__(self, model):
        self.inner = KEXT.CompVisDenoiser(CondUncondEps(model))

    def __call__(self, x, sigma, **kwargs):
        cond, uncond = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma])).chunk(2)
        return uncond + (cond - uncond) * CFG


class GeneratorTorch:
    """A1111 `TorchHijack`: k-diffusion's `torch.randn_like` draws one tensor per image generator."""

    def __init__(self, generators):
        self.generators = generators

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn_like(self, x):
        return torch.stack([torch.randn(x.shape[1:], generator=g) for g in self.generators])


@pytest.fixture(scope="module")
def model():
    return TinyModel()


# ---- reference schedules: k-diffusion's functions and A1111's sd_schedulers formulas on k-diffusion's wrapper

AYS = {
    False: [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
    True: [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
}


def reference_sigmas(schedule, n, wrapper, sdxl=False):
    smin, smax = wrapper.sigmas[0].item(), wrapper.sigmas[-1].item()

    def through_t(count, drop_last):
        start, end = wrapper.sigma_to_t(torch.tensor(smax)), wrapper.sigma_to_t(torch.tensor(smin))
        ts = torch.linspace(start, end, count + 1)[:-1] if drop_last else torch.linspace(start, end, count)
        return torch.tensor([*(float(wrapper.t_to_sigma(t)) for t in ts), 0.0])

    if schedule in ("automatic", "uniform"):
        return wrapper.get_sigmas(n)
    if schedule == "karras":
        return KS.get_sigmas_karras(n, smin, smax)
    if schedule == "exponential":
        return KS.get_sigmas_exponential(n, smin, smax)
    if schedule == "polyexponential":
        return KS.get_sigmas_polyexponential(n, smin, smax)
    if schedule == "sgm_uniform":
        return through_t(n, drop_last=True)
    if schedule == "normal":
        return through_t(n, drop_last=False)
    if schedule == "kl_optimal":
        i = torch.arange(n + 1)
        return torch.tan(i / n * math.atan(smin) + (1.0 - i / n) * math.atan(smax))
    if schedule == "align_your_steps":
        base = AYS[sdxl]
        if n == len(base):
            return torch.tensor([*base, 0.0])
        ys = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(base)), np.log(base[::-1]))
        return torch.tensor(np.append(np.exp(ys)[::-1], 0.0), dtype=torch.float32)
    if schedule == "simple":
        stride = len(wrapper.sigmas) / n
        return torch.tensor([*(float(wrapper.sigmas[-(1 + int(i * stride))]) for i in range(n)), 0.0])
    if schedule == "ddim":
        stride = max(len(wrapper.sigmas) // n, 1)
        return torch.tensor(
            [*(float(wrapper.sigmas[i]) for i in range(1, len(wrapper.sigmas), stride))][::-1] + [0.0]
        )
    if schedule == "beta":
        quantiles = [stats.beta.ppf(x, 0.6, 0.6) for x in 1 - np.linspace(0, 1, n)]
        return torch.tensor([*(smin + q * (smax - smin) for q in quantiles), 0.0])
    raise AssertionError(schedule)


def a1111_sigmas(choice, steps, wrapper, discard_always=False):
    """A1111 `get_sigmas`: one more step then drop the penultimate sigma for the discarding samplers."""
    discard = choice.discard_next_to_last_sigma or discard_always
    sigmas = reference_sigmas(choice.schedule_name, steps + int(discard), wrapper).float()
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


# A1111 v1.10 `sampler_extra_params` and the k-diffusion function per sampler.
EXTRA_PARAMS = {
    "sample_euler": ("s_churn", "s_tmin", "s_tmax", "s_noise"),
    "sample_heun": ("s_churn", "s_tmin", "s_tmax", "s_noise"),
    "sample_dpm_2": ("s_churn", "s_tmin", "s_tmax", "s_noise"),
    "sample_dpm_fast": ("s_noise",),
    "sample_dpm_2_ancestral": ("s_noise",),
    "sample_dpmpp_2s_ancestral": ("s_noise",),
    "sample_dpmpp_sde": ("s_noise",),
    "sample_dpmpp_2m_sde": ("s_noise",),
    "sample_dpmpp_3m_sde": ("s_noise",),
}
K_FUNCTIONS = {
    "Euler a": "sample_euler_ancestral",
    "Euler": "sample_euler",
    "LMS": "sample_lms",
    "Heun": "sample_heun",
    "DPM2": "sample_dpm_2",
    "DPM2 a": "sample_dpm_2_ancestral",
    "DPM++ 2S a": "sample_dpmpp_2s_ancestral",
    "DPM++ 2M": "sample_dpmpp_2m",
    "DPM++ SDE": "sample_dpmpp_sde",
    "DPM++ 2M SDE": "sample_dpmpp_2m_sde",
    "DPM++ 2M SDE Heun": "sample_dpmpp_2m_sde",
    "DPM++ 3M SDE": "sample_dpmpp_3m_sde",
    "DPM fast": "sample_dpm_fast",
    "DPM adaptive": "sample_dpm_adaptive",
}
BROWNIAN = {"DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"}
ETA_DEFAULT = 1.0


def init_latents(seed=99):
    return torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(seed))


def run_ours(
    model, name, schedule=None, steps=STEPS, steps_run=None, options=None, ensd=0, config=CONFIG, img2img=None
):
    steps_run, options = steps_run or steps, options or SamplerOptions()
    noise = ImageNoise(SHAPE, SEEDS, ensd=ensd)
    initial = noise.first()
    prepared = prepare_sampler(
        resolve_sampler(name, schedule),
        steps_total=steps,
        steps_run=steps_run,
        scheduler_config=config,
        seeds=SEEDS,
        generators=noise.generators,
        options=options,
        device=torch.device("cpu"),
        img2img=img2img,
    )
    start = init_latents() if img2img or steps_run < steps else torch.zeros(2, *SHAPE)
    model.calls = 0
    out = denoise(prepared, start + initial * prepared.start_sigma, model.guided)
    if prepared.model_calls is not None:
        assert model.calls == prepared.model_calls
    return out, model.calls


def run_kdiffusion(
    model,
    monkeypatch,
    name,
    schedule=None,
    steps=STEPS,
    steps_run=None,
    knobs=None,
    ensd=0,
    v_prediction=False,
    discard_always=False,
    denoised_space_cfg=False,
):
    """What A1111's KDiffusionSampler.sample / sample_img2img does with k-diffusion.

    By default the wrapper sits over the CFG-guided ε (CFG combined where the engine's loop combines it); with
    `denoised_space_cfg` CFG is combined on the denoised latents, exactly as A1111's CFGDenoiser does.
    """
    steps_run, knobs = steps_run or steps, knobs or {}
    choice = resolve_sampler(name, schedule)
    wrapper = (KEXT.CompVisVDenoiser if v_prediction else KEXT.CompVisDenoiser)(GuidedEps(model))
    sigmas = a1111_sigmas(choice, steps, wrapper, discard_always)
    noise = ImageNoise(SHAPE, SEEDS, ensd=ensd)
    initial = noise.first()
    monkeypatch.setattr(KS, "torch", GeneratorTorch(noise.generators))
    function_name = K_FUNCTIONS[name]
    function = getattr(KS, function_name)
    kwargs = {key: knobs[key] for key in EXTRA_PARAMS.get(function_name, ()) if key in knobs}
    if "eta" in inspect.signature(function).parameters:
        kwargs["eta"] = knobs.get("eta", ETA_DEFAULT)
    if name == "DPM++ 2M SDE Heun":
        kwargs["solver_type"] = "heun"
    if steps_run == steps:
        schedule_run, x = sigmas, initial * sigmas[0]
    else:
        schedule_run = sigmas[steps - (steps_run - 1) - 1 :]
        x = init_latents() + initial * schedule_run[0]
    if name in BROWNIAN:
        kwargs["noise_sampler"] = KS.BrownianTreeNoiseSampler(
            x, sigmas[sigmas > 0].min(), sigmas.max(), seed=SEEDS
        )
    model.calls = 0
    denoiser = DenoisedSpaceCfg(model) if denoised_space_cfg else wrapper
    kwargs["extra_args"] = {"cond": None}
    if name in ("DPM fast", "DPM adaptive"):
        low, high = (
            (wrapper.sigmas[0].item(), wrapper.sigmas[-1].item())
            if steps_run == steps
            else (schedule_run[-2], schedule_run[0])
        )
        if name == "DPM fast":
            kwargs["n"] = len(schedule_run) - 1
        out = function(denoiser, x, low, high, disable=True, **kwargs)
    else:
        out = function(denoiser, x, schedule_run, disable=True, **kwargs)
    return out, model.calls


def assert_same(ours, reference, tolerance=TOLERANCE):
    (x, calls), (expected, expected_calls) = ours, reference
    assert calls == expected_calls
    assert torch.isfinite(expected).all()
    difference = (x - expected).abs().max().item()
    assert difference < tolerance, f"max difference {difference:.2e}"


K_SAMPLERS = [
    row.name for row in SAMPLERS if row.name in K_FUNCTIONS and row.name not in ("DPM fast", "DPM adaptive")
]
SCHEDULE_NAMES = [row.name for row in SCHEDULES]


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
@pytest.mark.parametrize("name", K_SAMPLERS)
def test_k_sampler_matches_kdiffusion(model, monkeypatch, name, schedule):
    assert_same(
        run_ours(model, name, schedule, steps=MATRIX_STEPS),
        run_kdiffusion(model, monkeypatch, name, schedule, steps=MATRIX_STEPS),
    )


def test_lms_fourth_order_matches_kdiffusion(model, monkeypatch):
    assert_same(
        run_ours(model, "LMS", "karras", steps=6),
        run_kdiffusion(model, monkeypatch, "LMS", "karras", steps=6),
    )


@pytest.mark.parametrize(
    ("name", "schedule"),
    [("DPM fast", "automatic"), ("DPM fast", "align_your_steps"), ("DPM adaptive", "automatic")],
)
def test_dpm_solver_samplers_match_kdiffusion(model, monkeypatch, name, schedule):
    """They ignore the schedule except for the initial noise scale (Align Your Steps starts at 14.615)."""
    assert_same(run_ours(model, name, schedule), run_kdiffusion(model, monkeypatch, name, schedule))


@pytest.mark.parametrize("name", list(K_FUNCTIONS))
def test_a1111_denoised_space_cfg_differs_only_by_rounding(model, monkeypatch, name):
    """A1111 guides the denoised latents, the loop guides ε: equal in exact arithmetic. In float32 the
    difference of two denoised latents loses a few bits, which the samplers carry along (most for DPM adaptive,
    whose step control reacts to it): the results agree to 1e-4 of the latents' magnitude (~60 with this
    random UNet)."""
    ours = run_ours(model, name)
    reference = run_kdiffusion(model, monkeypatch, name, denoised_space_cfg=True)
    assert_same(ours, reference, tolerance=TOLERANCE * reference[0].abs().max().item())


@pytest.mark.parametrize(
    ("name", "knobs"),
    [
        ("Euler a", {"eta": 0.6}),
        ("Euler a", {"eta": 0.0}),
        ("DPM2 a", {"eta": 0.5, "s_noise": 0.9}),
        ("DPM++ 2S a", {"eta": 0.7, "s_noise": 1.1}),
        ("DPM++ SDE", {"eta": 0.5, "s_noise": 0.8}),
        ("DPM++ 2M SDE", {"eta": 0.0}),
        ("DPM++ 3M SDE", {"eta": 0.6, "s_noise": 1.2}),
        ("DPM fast", {"eta": 0.0, "s_noise": 0.9}),
        ("Euler", {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 10.0, "s_noise": 1.003}),
        ("Heun", {"s_churn": 1.0}),
        ("DPM2", {"s_churn": 3.0, "s_noise": 0.95}),
    ],
)
def test_sampler_knobs_match_kdiffusion(model, monkeypatch, name, knobs):
    options = SamplerOptions(**knobs)
    assert_same(run_ours(model, name, options=options), run_kdiffusion(model, monkeypatch, name, knobs=knobs))


def test_knobs_a1111_does_not_pass_are_ignored(model, monkeypatch):
    # A1111 passes no s_noise to Euler a and no churn to DPM++ 2M.
    options = SamplerOptions(s_noise=0.5, s_churn=3.0)
    assert_same(run_ours(model, "Euler a", options=options), run_kdiffusion(model, monkeypatch, "Euler a"))
    assert_same(run_ours(model, "DPM++ 2M", options=options), run_kdiffusion(model, monkeypatch, "DPM++ 2M"))


@pytest.mark.parametrize("name", ["Euler a", "DPM++ 2S a", "Euler"])
def test_ensd_moves_ancestral_noise_as_in_a1111(model, monkeypatch, name):
    knobs = {"s_churn": 1.0} if name == "Euler" else {}
    ours = run_ours(model, name, options=SamplerOptions(**knobs), ensd=31337)
    assert_same(ours, run_kdiffusion(model, monkeypatch, name, knobs=knobs, ensd=31337))
    assert not torch.allclose(ours[0], run_ours(model, name, options=SamplerOptions(**knobs))[0])


def test_sde_noise_ignores_ensd(model):
    assert torch.equal(run_ours(model, "DPM++ SDE", ensd=5)[0], run_ours(model, "DPM++ SDE")[0])


@pytest.mark.parametrize(
    ("name", "schedule"),
    [
        ("Euler a", None),
        ("DPM++ 2M", None),
        ("DPM++ SDE", None),
        ("DPM++ 3M SDE", None),
        ("DPM2", None),
        ("LMS", "karras"),
        ("DPM fast", None),
        ("DPM adaptive", None),
        ("Heun", "ddim"),
    ],
)
def test_img2img_runs_the_tail_of_the_schedule(model, monkeypatch, name, schedule):
    # hires-style: 3 steps of a 10-step schedule; Brownian trees still span the full schedule.
    ours = run_ours(model, name, schedule, steps=10, steps_run=3)
    assert_same(ours, run_kdiffusion(model, monkeypatch, name, schedule, steps=10, steps_run=3))


def test_always_discard_next_to_last_sigma(model, monkeypatch):
    options = SamplerOptions(always_discard_next_to_last_sigma=True)
    assert_same(
        run_ours(model, "Euler", options=options),
        run_kdiffusion(model, monkeypatch, "Euler", discard_always=True),
    )


def test_v_prediction_model(model, monkeypatch):
    config = {**CONFIG, "prediction_type": "v_prediction"}
    assert_same(
        run_ours(model, "DPM++ 2M", config=config),
        run_kdiffusion(model, monkeypatch, "DPM++ 2M", v_prediction=True),
    )


def test_dpmpp_sde_costs_2n_minus_1_calls(model):
    for steps in (3, 5):
        _, calls = run_ours(model, "DPM++ SDE", steps=steps)
        assert calls == 2 * steps - 1


def test_same_seed_same_latents(model):
    for name in ("DPM++ SDE", "Euler a", "DPM++ 2M SDE"):
        assert torch.equal(run_ours(model, name)[0], run_ours(model, name)[0])


# ---- Restart and LCM: A1111's own code (sd_samplers_extra, sd_samplers_lcm), transcribed as loops ----


def reference_restart(model, monkeypatch, steps):
    """A1111 `restart_sampler` over k-diffusion's denoiser and Karras sigmas."""
    denoiser = wrapper = KEXT.CompVisDenoiser(GuidedEps(model))
    sigmas = reference_sigmas("karras", steps, wrapper).float()
    noise = ImageNoise(SHAPE, SEEDS)
    x = noise.first() * sigmas[0]
    draw = GeneratorTorch(noise.generators).randn_like
    ones = x.new_ones([2])
    plan_sigmas, restarts = sigmas, {}
    if steps >= 20:
        restart_steps, times = (steps // 4, 2) if steps >= 36 else (9, 1)
        plan_sigmas = KS.get_sigmas_karras(steps - restart_steps * times, sigmas[-2].item(), sigmas[0].item())
        restarts = {int(torch.argmin(abs(plan_sigmas - 0.1))): (restart_steps + 1, times, 2)}
    pairs = []
    for i in range(len(plan_sigmas) - 1):
        pairs.append((plan_sigmas[i], plan_sigmas[i + 1]))
        if i + 1 in restarts:
            count, times, high = restarts[i + 1]
            top = int(torch.argmin(abs(plan_sigmas - high)))
            if top < i + 1:
                loop = KS.get_sigmas_karras(count, plan_sigmas[i + 1].item(), plan_sigmas[top].item())[:-1]
                pairs += list(zip(loop[:-1], loop[1:], strict=True)) * times
    model.calls, last = 0, None
    for old, new in pairs:
        if last is not None and last < old:
            x = x + draw(x) * (old**2 - last**2) ** 0.5
        d = KS.to_d(x, old, denoiser(x, old * ones))
        if new == 0:
            x = x + d * (new - old)
        else:
            x_2 = x + d * (new - old)
            x = x + (d + KS.to_d(x_2, new, denoiser(x_2, new * ones))) / 2 * (new - old)
        last = new
    return x, model.calls


@pytest.mark.parametrize("steps", [4, 21])
def test_restart_matches_a1111(model, monkeypatch, steps):
    assert_same(run_ours(model, "Restart", steps=steps), reference_restart(model, monkeypatch, steps))


class LcmWrapper(KEXT.DiscreteEpsDDPMDenoiser):
    """A1111 `LCMCompVisDenoiser`: 50 valid timesteps (19, 39, ... 999), quantised t, LCM boundary scaling."""

    def __init__(self, inner):
        valid = torch.stack([inner.alphas_cumprod[999 - 20 * k] for k in range(50)]).flip(0)
        super().__init__(inner, valid, quantize=None)

    def get_sigmas(self, n=None):
        t = torch.linspace(self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min), n)
        return KS.append_zero(self.t_to_sigma(t))

    def sigma_to_t(self, sigma, quantize=None):
        return (sigma.log() - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape) * 20 + 19

    def t_to_sigma(self, t):
        return super().t_to_sigma(torch.clamp(((t - 19) / 20).float(), min=0, max=49))

    def get_eps(self, *args, **kwargs):
        return self.inner_model.apply_model(*args, **kwargs)

    def forward(self, x, sigma, **kwargs):
        c_out, c_in = [KS.utils.append_dims(v, x.ndim) for v in self.get_scalings(sigma)]
        denoised = x + self.get_eps(x * c_in, self.sigma_to_t(sigma), **kwargs) * c_out
        scaled = KS.utils.append_dims(self.sigma_to_t(sigma), x.ndim) * 10.0
        return scaled / (scaled**2 + 0.25) ** 0.5 * denoised + 0.25 / (scaled**2 + 0.25) * x


def reference_lcm(model, schedule, steps, steps_run):
    denoiser = wrapper = LcmWrapper(GuidedEps(model))
    sigmas = reference_sigmas(schedule, steps, wrapper).float()
    noise = ImageNoise(SHAPE, SEEDS)
    initial = noise.first()
    draw = GeneratorTorch(noise.generators).randn_like
    run = sigmas[steps - steps_run :]
    x = initial * run[0] if steps_run == steps else init_latents() + initial * run[0]
    model.calls = 0
    for i in range(len(run) - 1):
        x = denoiser(x, run[i] * x.new_ones([2]))
        if run[i + 1] > 0:
            x = x + run[i + 1] * draw(x)
    return x, model.calls


@pytest.mark.parametrize(
    ("schedule", "steps_run"),
    [("automatic", STEPS), ("karras", STEPS), ("sgm_uniform", STEPS), ("simple", STEPS), ("automatic", 2)],
)
def test_lcm_matches_a1111(model, schedule, steps_run):
    steps = STEPS if steps_run == STEPS else 6
    assert_same(
        run_ours(model, "LCM", schedule, steps=steps, steps_run=steps_run),
        reference_lcm(model, schedule, steps, steps_run),
    )


# ---- DDIM / PLMS: diffusers' schedulers stepping A1111's timesteps (1000 // steps divides 1000 here) ----


def diffusers_timestep_reference(model, scheduler_class, steps, steps_run=None, eta=None, **config):
    scheduler = scheduler_class(**{k: v for k, v in CONFIG.items()}, set_alpha_to_one=False, **config)
    scheduler.set_timesteps(steps)
    scheduler.alphas_cumprod = model.alphas_cumprod.clone()  # A1111's float64-built ᾱ
    noise = ImageNoise(SHAPE, SEEDS)
    x = noise.first()
    draw = GeneratorTorch(noise.generators).randn_like
    timesteps = scheduler.timesteps[:-1]  # A1111 stops at timestep 1
    if steps_run is not None:
        # A1111 img2img: noise to timesteps[t_enc], then evaluate timesteps[t_enc - 1] ... timesteps[1].
        t_enc = steps_run - 1
        noised_at = scheduler.timesteps[steps - 1 - t_enc]
        alpha = model.alphas_cumprod[noised_at]
        x = init_latents() * alpha.sqrt() + x * (1 - alpha).sqrt()
        timesteps = scheduler.timesteps[steps - t_enc : -1]
    model.calls = 0
    for t in timesteps:
        eps = model.guided(x, t)
        if eta is None:
            x = scheduler.step(eps, t, x).prev_sample
        else:
            x = scheduler.step(eps, t, x, eta=eta, variance_noise=draw(x)).prev_sample
    return x, model.calls


@pytest.mark.parametrize(("steps", "eta"), [(5, None), (10, None), (5, 0.7)])
def test_ddim_matches_diffusers_on_a1111_timesteps(model, steps, eta):
    ours = run_ours(model, "DDIM", steps=steps, options=SamplerOptions(eta=eta))
    assert_same(
        ours, diffusers_timestep_reference(model, DDIMScheduler, steps, eta=eta or 0.0, clip_sample=False)
    )
    assert ours[1] == steps - 1  # A1111's DDIM makes one call fewer than its step count


@pytest.mark.parametrize("steps_run", [5, 10])
def test_ddim_img2img_matches_a1111(model, steps_run):
    ours = run_ours(model, "DDIM", steps=10, steps_run=steps_run, img2img=True)
    assert_same(
        ours,
        diffusers_timestep_reference(
            model, DDIMScheduler, 10, steps_run=steps_run, eta=0.0, clip_sample=False
        ),
    )


@pytest.mark.parametrize("steps", [5, 10])
def test_plms_matches_diffusers_on_a1111_timesteps(model, steps):
    assert_same(
        run_ours(model, "PLMS", steps=steps),
        diffusers_timestep_reference(model, PNDMScheduler, steps, skip_prk_steps=True),
    )


# ---- UniPC: A1111's uni_pc (multistep, data prediction, B(h)), transcribed as a loop ----


def reference_unipc(model, steps, variant="bh1", steps_run=None, order=3):
    ac = model.alphas_cumprod
    knots_t = torch.linspace(0.0, 1.0, 1001)[1:]
    knots_log_alpha = 0.5 * torch.log(ac)

    def log_alpha(t):
        return (
            torch.from_numpy(
                np.interp(
                    t.reshape(-1).double().numpy(), knots_t.double().numpy(), knots_log_alpha.double().numpy()
                )
            )
            .float()
            .reshape(t.shape)
        )

    def lam(t):
        return log_alpha(t) - 0.5 * torch.log(1 - torch.exp(2 * log_alpha(t)))

    def alpha(t):
        return torch.exp(log_alpha(t))

    def std(t):
        return torch.sqrt(1 - torch.exp(2 * log_alpha(t)))

    def data(x, t):
        return (x - std(t) * model.guided(x, (t - 0.001) * 1000)) / alpha(t)

    timesteps = torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)
    noise = ImageNoise(SHAPE, SEEDS)
    x = noise.first()
    if steps_run is not None:
        t_enc = steps_run - 1
        a = ac[timesteps[t_enc]]
        x = init_latents() * a.sqrt() + x * (1 - a).sqrt()
        timesteps = timesteps[:t_enc]
    count = len(timesteps)
    start = timesteps[-1] / 1000 + 1 / 1000 if steps_run is not None else 1.0
    ts = torch.linspace(start, 0.001, count + 1)
    model.calls = 0
    models, times = [data(x, ts[0])], [ts[0]]
    for step in range(1, count + 1):
        t = ts[step]
        k = min(step, order) if step < order else min(order, count + 1 - step)
        h = lam(t) - lam(times[-1])
        rks = [((lam(times[-(i + 1)]) - lam(times[-1])) / h).item() for i in range(1, k)] + [1.0]
        d1s = [(models[-(i + 1)] - models[-1]) / rks[i - 1] for i in range(1, k)]
        hh = -h
        b_h = hh if variant == "bh1" else torch.expm1(hh)
        phi, fact, rows, rhs = torch.expm1(hh) / hh - 1, 1, [], []
        for i in range(1, k + 1):
            rows.append(torch.tensor(rks) ** (i - 1))
            rhs.append(phi * fact / b_h)
            fact *= i + 1
            phi = phi / hh - 1 / fact
        rows, rhs = torch.stack(rows), torch.stack(rhs).reshape(-1)
        base = std(t) / std(times[-1]) * x - alpha(t) * torch.expm1(hh) * models[-1]
        pred = base
        if d1s:
            rho_p = torch.tensor([0.5]) if k == 2 else torch.linalg.solve(rows[:-1, :-1], rhs[:-1])
            pred = base - alpha(t) * b_h * sum(r * d for r, d in zip(rho_p, d1s, strict=True))
        if step == count:
            x = pred
            break
        rho_c = torch.tensor([0.5]) if k == 1 else torch.linalg.solve(rows, rhs)
        model_t = data(pred, t)
        correction = sum(r * d for r, d in zip(rho_c[:-1], d1s, strict=True))
        x = base - alpha(t) * b_h * (correction + rho_c[-1] * (model_t - models[-1]))
        models, times = [*models, model_t][-order:], [*times, t][-order:]
    return x, model.calls


@pytest.mark.parametrize(
    ("steps", "variant", "steps_run"), [(4, "bh1", None), (10, "bh1", None), (5, "bh2", None), (10, "bh1", 5)]
)
def test_unipc_matches_a1111(model, steps, variant, steps_run):
    ours = run_ours(
        model, "UniPC", steps=steps, steps_run=steps_run, options=SamplerOptions(uni_pc_variant=variant)
    )
    assert_same(ours, reference_unipc(model, steps, variant, steps_run))


# ---- schedules, table coverage and the step contract ----


def test_karras_sigmas_are_a1111s():
    # A1111 SD1.5/SDXL Karras, 20 steps (published values).
    expected = [
        14.6146,
        11.7254,
        9.3402,
        7.3836,
        5.7894,
        4.4998,
        3.4647,
        2.6408,
        1.9909,
        1.4832,
        1.0908,
        0.7909,
        0.5647,
        0.3964,
        0.2730,
        0.1842,
        0.1213,
        0.0779,
        0.0485,
        0.0292,
        0.0,
    ]
    from engine.sampling.model_schedule import DiscreteSigmas
    from engine.sampling.schedulers import full_sigmas

    sigmas = full_sigmas(
        resolve_sampler("DPM++ 2M", None), 20, DiscreteSigmas(a1111_alphas_cumprod()), SamplerOptions()
    )
    assert torch.allclose(sigmas, torch.tensor(expected), atol=1e-4)


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
def test_schedule_sigmas_match_the_reference(schedule):
    from engine.sampling.model_schedule import DiscreteSigmas
    from engine.sampling.sigmas import ScheduleOptions, schedule_sigmas

    wrapper = KEXT.CompVisDenoiser(types.SimpleNamespace(alphas_cumprod=a1111_alphas_cumprod()))
    model = DiscreteSigmas(a1111_alphas_cumprod())
    default_rho = next(row.default_rho for row in SCHEDULES if row.name == schedule)
    for n in (1, 3, 10, 20, 33):
        for sdxl in (False, True):
            ours = schedule_sigmas(schedule, n, model, ScheduleOptions(sdxl=sdxl), default_rho)
            expected = reference_sigmas(schedule, n, wrapper, sdxl=sdxl).float()
            assert ours.dtype == torch.float32
            assert torch.allclose(ours, expected, rtol=1e-6, atol=0), (n, sdxl)


def test_every_table_row_has_an_implementation():
    implemented = {**SIGMA_ALGORITHMS, **SOLVER_ALGORITHMS, **TIMESTEP_ALGORITHMS}
    for row in SAMPLERS:
        assert row.unsupported or row.algorithm in implemented, row.name


def test_step_rejects_a_timestep_out_of_order(model):
    noise = ImageNoise(SHAPE, SEEDS)
    prepared = prepare_sampler(
        resolve_sampler("Euler", None),
        steps_total=3,
        steps_run=3,
        scheduler_config=CONFIG,
        seeds=SEEDS,
        generators=noise.generators,
        options=SamplerOptions(),
        device=torch.device("cpu"),
    )
    x = noise.first() * prepared.start_sigma
    eps = model.guided(prepared.scale_model_input(x, prepared.timesteps[0]), prepared.timesteps[0])
    with pytest.raises(ValueError, match="timestep"):
        prepared.step(eps, prepared.timesteps[1], x)
