"""Build a request's sampler: A1111's sigmas or timesteps, noise and step algorithm behind one interface.

`prepare_sampler` is the only entry point the denoising loop needs. Every A1111 sampler runs here as our own
step implementation of what A1111 executes (k-diffusion's functions, A1111's DDIM/PLMS/UniPC/LCM) rather than
as a diffusers scheduler, because none of the candidates reproduces A1111 for all the options A1111 passes: in
diffusers 0.42 EulerAncestral, LMS, Heun, KDPM2, DPMSolverSDE and DPMSolverMultistep cannot take A1111's
sigmas (only Euler and UniPC accept custom sigmas); Euler applies churn after the model saw the un-churned
sample; the ancestral and SDE schedulers have no eta; DPM++ 2M SDE draws Gaussian instead of Brownian noise;
DDIM/PNDM derive the previous timestep as t - 1000 // steps, wrong when that does not divide 1000; UniPC
rounds to integer timesteps. The tests hold these implementations to k-diffusion / A1111 at 1e-4.
"""

import functools
import logging
from dataclasses import dataclass

import torch

from engine.errors import RequestError, UnsupportedError
from engine.samplers import SCHEDULES, SamplerChoice, SamplerOptions
from engine.sampling import dpm_solver, k_dpmpp, k_euler, lcm, restart, timestep_samplers, unipc
from engine.sampling.brownian import BrownianNoise
from engine.sampling.denoisers import SigmaSpace, TimestepSpace
from engine.sampling.k_euler import SamplerParams
from engine.sampling.model_schedule import DiscreteSigmas, LcmSigmas, alphas_cumprod_from_config
from engine.sampling.noise import GeneratorNoise, zero_noise
from engine.sampling.sigmas import ScheduleOptions, schedule_sigmas
from engine.sampling.stepper import PreparedSampler, plan_levels


__all__ = ["PreparedSampler", "SamplerOptions", "prepare_sampler"]

logger = logging.getLogger(__name__)


# Samplers over a sigma schedule: algorithm(x, sigmas, noise, params) generators.
SIGMA_ALGORITHMS = {
    "euler": k_euler.euler,
    "euler_ancestral": k_euler.euler_ancestral,
    "heun": k_euler.heun,
    "dpm_2": k_euler.dpm_2,
    "dpm_2_ancestral": k_euler.dpm_2_ancestral,
    "lms": k_euler.lms,
    "dpmpp_2s_ancestral": k_dpmpp.dpmpp_2s_ancestral,
    "dpmpp_sde": k_dpmpp.dpmpp_sde,
    "dpmpp_2m": k_dpmpp.dpmpp_2m,
    "dpmpp_2m_sde": functools.partial(k_dpmpp.dpmpp_2m_sde, solver_type="midpoint"),
    "dpmpp_2m_sde_heun": functools.partial(k_dpmpp.dpmpp_2m_sde, solver_type="heun"),
    "dpmpp_3m_sde": k_dpmpp.dpmpp_3m_sde,
    "restart": restart.restart,
    "lcm": lcm.lcm,
}
# DPM-Solver fast/adaptive take (sigma_min, sigma_max[, n]) instead of a schedule.
SOLVER_ALGORITHMS = {"dpm_fast": dpm_solver.dpm_fast, "dpm_adaptive": dpm_solver.dpm_adaptive}
# A1111's timestep samplers: algorithm(x, timesteps, noise, params, ...) over variance-preserving latents.
TIMESTEP_ALGORITHMS = {"ddim": timestep_samplers.ddim, "plms": timestep_samplers.plms, "unipc": unipc.unipc}


def _sampler_params(choice: SamplerChoice, options: SamplerOptions) -> SamplerParams:
    """The values A1111 passes: eta where the function takes it, churn knobs per `sampler_extra_params`."""
    definition = choice.definition
    tunables = definition.tunables
    eta = definition.default_eta if options.eta is None else options.eta
    return SamplerParams(
        eta=eta if definition.uses_eta else definition.default_eta,
        s_noise=options.s_noise if "s_noise" in tunables else 1.0,
        s_churn=options.s_churn if "s_churn" in tunables else 0.0,
        s_tmin=options.s_tmin if "s_tmin" in tunables else 0.0,
        s_tmax=(options.s_tmax or float("inf")) if "s_tmax" in tunables else float("inf"),
    )


def _check_steps(steps_total: int, steps_run: int) -> None:
    if steps_total < 1:
        raise RequestError("steps", f"must be at least 1, got {steps_total}")
    if not 1 <= steps_run <= steps_total:
        raise RequestError("steps", f"steps to run ({steps_run}) must be between 1 and the schedule's "
                                    f"{steps_total}")


@dataclass(frozen=True)
class _Request:
    """Everything one sampler preparation reads."""

    choice: SamplerChoice
    steps_total: int
    steps_run: int
    img2img: bool
    alphas_cumprod: torch.Tensor
    prediction_type: str
    seeds: list[int]
    generators: list[torch.Generator]
    options: SamplerOptions
    device: torch.device

    @property
    def algorithm(self) -> str:
        return self.choice.definition.algorithm


def full_sigmas(choice: SamplerChoice, steps: int, model: DiscreteSigmas,
                options: SamplerOptions) -> torch.Tensor:
    """A1111 `KDiffusionSampler.get_sigmas`: the schedule for `steps` (penultimate sigma dropped if asked)."""
    discard = choice.discard_next_to_last_sigma or options.always_discard_next_to_last_sigma
    default_rho = next(row.default_rho for row in SCHEDULES if row.name == choice.schedule_name)
    schedule_options = ScheduleOptions(
        sigma_min=options.sigma_min, sigma_max=options.sigma_max, rho=options.rho,
        use_old_karras_scheduler_sigmas=options.use_old_karras_scheduler_sigmas,
        beta_dist_alpha=options.beta_dist_alpha, beta_dist_beta=options.beta_dist_beta, sdxl=options.sdxl,
    )
    sigmas = schedule_sigmas(choice.schedule_name, steps + (1 if discard else 0), model, schedule_options,
                             default_rho)
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def _sigma_space(request: _Request) -> SigmaSpace:
    if request.choice.definition.family == "lcm":
        return lcm.LcmSpace(LcmSigmas(request.alphas_cumprod), request.prediction_type)
    return SigmaSpace(DiscreteSigmas(request.alphas_cumprod), request.prediction_type)


def _sigma_function(request: _Request, model: DiscreteSigmas, run_sigmas: torch.Tensor):
    """The algorithm with everything bound except the first latent and the noise source."""
    params = _sampler_params(request.choice, request.options)
    if request.algorithm == "lms":
        # Integrate LMS's coefficients once for the planning run and the real one.
        return functools.partial(k_euler.lms, sigmas=run_sigmas, params=params,
                                 coefficients=k_euler.lms_coefficients(run_sigmas))
    if request.algorithm not in SOLVER_ALGORITHMS:
        return functools.partial(SIGMA_ALGORITHMS[request.algorithm], sigmas=run_sigmas, params=params)
    # A1111: txt2img solves between the model's extreme sigmas in `steps` evaluations; img2img between the
    # tail's first and last non-zero sigma, one evaluation per sigma step.
    if request.img2img:
        low, high, steps = run_sigmas[-2], run_sigmas[0], len(run_sigmas) - 1
    else:
        low, high, steps = model.sigmas[0], model.sigmas[-1], request.steps_total
    extra = {"steps": steps} if request.algorithm == "dpm_fast" else {}
    return functools.partial(SOLVER_ALGORITHMS[request.algorithm], sigma_min=low, sigma_max=high,
                             params=params, **extra)


def _prepare_sigma_sampler(request: _Request) -> PreparedSampler:
    space = _sigma_space(request)
    sigmas = full_sigmas(request.choice, request.steps_total, space.model, request.options)
    # img2img/hires run the last `steps_run` steps (A1111 `sample_img2img`, t_enc = steps_run - 1).
    run_sigmas = sigmas[request.steps_total - request.steps_run:]
    start_sigma = run_sigmas[0]
    if request.options.sgm_noise_multiplier and not request.img2img:
        start_sigma = torch.sqrt(1.0 + start_sigma**2)
    if request.choice.brownian_noise:
        # Over the full schedule's range even when only its tail runs (A1111 `create_noise_sampler`).
        noise = BrownianNoise(sigmas[sigmas > 0].min(), sigmas.max(), request.seeds, request.device,
                              request.options.randn_source)
    else:
        noise = GeneratorNoise(request.generators)
    function = _sigma_function(request, space.model, run_sigmas)

    def algorithm(x):
        return function(x, noise=noise)

    def planned(x):
        return function(x, noise=zero_noise)

    if request.algorithm == "dpm_adaptive":
        first_level = plan_levels(planned, limit=1)[0]
        return PreparedSampler(algorithm, space, start_sigma=start_sigma, first_level=first_level,
                               timesteps=None)
    levels = plan_levels(planned)
    # One vectorised σ → t lookup for the whole plan.
    timesteps = space.timestep(torch.stack(levels)).float()
    return PreparedSampler(algorithm, space, start_sigma=start_sigma, first_level=levels[0],
                           timesteps=timesteps)


def _prepare_timestep_sampler(request: _Request) -> PreparedSampler:
    space = TimestepSpace(request.alphas_cumprod, request.prediction_type)
    options = request.options
    discard = options.always_discard_next_to_last_sigma
    timesteps = timestep_samplers.a1111_timesteps(request.steps_total + (1 if discard else 0))
    extra = {}
    if request.algorithm == "unipc":
        extra = {"variant": options.uni_pc_variant, "skip_type": options.uni_pc_skip_type,
                 "order": options.uni_pc_order, "lower_order_final": options.uni_pc_lower_order_final,
                 "img2img": request.img2img}
    entry_scale = None
    if request.img2img:
        # A1111 `CompVisSampler.sample_img2img`: noise to timesteps[t_enc], then run timesteps[:t_enc] (whose
        # first evaluation is one timestep lower than the noise level, as in A1111).
        t_enc = request.steps_run - 1
        entry_scale = request.alphas_cumprod[timesteps[t_enc]].sqrt().item()
        timesteps = timesteps[:t_enc]
    function = functools.partial(TIMESTEP_ALGORITHMS[request.algorithm], timesteps=timesteps,
                                 params=_sampler_params(request.choice, options),
                                 alphas_cumprod=request.alphas_cumprod, **extra)
    levels = plan_levels(lambda x: function(x, noise=zero_noise))
    if not levels:
        raise RequestError("steps", f"{request.choice.sampler} makes no model evaluation when running "
                                    f"{request.steps_run} of {request.steps_total} steps; run more steps")
    if entry_scale is None:
        # txt2img: A1111 starts from unscaled noise, x_vp = noise.
        start_sigma = 1.0 / space.scale(levels[0]).item()
    else:
        start_sigma = ((1 - entry_scale**2) ** 0.5) / entry_scale
    noise = GeneratorNoise(request.generators)
    return PreparedSampler(lambda x: function(x, noise=noise), space, start_sigma=start_sigma,
                           first_level=levels[0], timesteps=torch.stack([space.timestep(t) for t in levels]),
                           entry_scale=entry_scale)


def prepare_sampler(choice: SamplerChoice, *, steps_total: int, steps_run: int, scheduler_config: dict,
                    seeds: list[int], generators: list[torch.Generator], options: SamplerOptions,
                    device: torch.device, img2img: bool | None = None) -> PreparedSampler:
    """Prepare one request's sampler as A1111 would run it.

    Args:
        choice: from `engine.samplers.resolve_sampler`.
        steps_total: length of the schedule.
        steps_run: how many of its last steps to run (txt2img: all; img2img and hires: A1111's `t_enc + 1`).
        scheduler_config: the checkpoint's diffusers scheduler config (beta schedule, prediction type); its
            timestep spacing is ignored, A1111's schedules are computed here.
        seeds: per-image seeds (Brownian trees). generators: per-image generators after the initial noise was
            drawn (`ImageNoise.generators`), for ancestral/churn/eta noise.
        options: `SamplerOptions`. device: where the latents live.
        img2img: whether A1111 would run `sample_img2img` (start from an image); by default, when
            `steps_run < steps_total`. Pass it for img2img at full strength, where both counts are equal but
            A1111's DDIM/PLMS/UniPC and DPM fast/adaptive still take their img2img path.

    Raises:
        RequestError: step counts that cannot run. UnsupportedError: a sampler or model config we cannot run.
    """
    _check_steps(steps_total, steps_run)
    if choice.definition.unsupported:
        raise UnsupportedError("sampler_name", choice.definition.unsupported)
    request = _Request(
        choice=choice, steps_total=steps_total, steps_run=steps_run,
        img2img=steps_run < steps_total if img2img is None else img2img,
        alphas_cumprod=alphas_cumprod_from_config(scheduler_config),
        prediction_type=scheduler_config.get("prediction_type", "epsilon"),
        seeds=list(seeds), generators=list(generators), options=options, device=torch.device(device),
    )
    logger.debug("sampler %s / %s: %d of %d steps", choice.sampler, choice.schedule, steps_run, steps_total)
    if choice.definition.family == "timesteps":
        return _prepare_timestep_sampler(request)
    return _prepare_sigma_sampler(request)
