"""A1111's sampler and schedule-type tables, name resolution, and the /samplers and /schedulers listings."""

import logging
from dataclasses import dataclass, field

from engine.errors import NotFoundError, UnsupportedError, choices


logger = logging.getLogger(__name__)

# A1111 v1.10 `sd_samplers.samplers[0]`: what a missing sampler name means.
DEFAULT_SAMPLER = "DPM++ 2M"
AUTOMATIC = "automatic"


@dataclass(frozen=True)
class SamplerDef:
    """One row of A1111's sampler table.

    `options` keeps A1111's option dict as pairs, in A1111's order (served as-is by /sdapi/v1/samplers);
    `algorithm` names the step implementation in `engine.sampling.schedulers`; `family` says which A1111
    sampler class runs it: "kdiffusion" (sigma schedule, k-diffusion function), "timesteps" (DDIM/PLMS/UniPC
    on `range(0, 1000, 1000 // steps) + 1`, schedule type ignored) or "lcm" (A1111's LCM denoiser).
    `uses_eta` is whether A1111 passes `eta` (the k-diffusion function takes it); `tunables` lists which of
    s_churn / s_tmin / s_tmax / s_noise A1111 passes (`sampler_extra_params`).
    """

    name: str
    algorithm: str
    aliases: tuple[str, ...] = ()
    options: tuple[tuple[str, object], ...] = ()
    family: str = "kdiffusion"
    uses_eta: bool = False
    default_eta: float = 1.0
    tunables: tuple[str, ...] = ()
    unsupported: str | None = None

    def option(self, key: str, default=None):
        return dict(self.options).get(key, default)

    @property
    def default_schedule(self) -> str | None:
        return self.option("scheduler")

    @property
    def second_order(self) -> bool:
        return bool(self.option("second_order", False))

    @property
    def brownian_noise(self) -> bool:
        return bool(self.option("brownian_noise", False))

    @property
    def uses_ensd(self) -> bool:
        return bool(self.option("uses_ensd", False))

    @property
    def discard_next_to_last_sigma(self) -> bool:
        return bool(self.option("discard_next_to_last_sigma", False))

    @property
    def ignores_schedule(self) -> bool:
        return self.family == "timesteps"


@dataclass(frozen=True)
class ScheduleDef:
    """One row of A1111's schedule-type table (`modules/sd_schedulers.py`)."""

    name: str
    label: str
    aliases: tuple[str, ...] = ()
    default_rho: float = -1.0
    need_inner_model: bool = False


_CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
_NOISE = ("s_noise",)
KARRAS = ("scheduler", "karras")
EXPONENTIAL = ("scheduler", "exponential")
SECOND_ORDER = ("second_order", True)
BROWNIAN = ("brownian_noise", True)
ENSD = ("uses_ensd", True)
DISCARD = ("discard_next_to_last_sigma", True)

# A1111 v1.10.1 `sd_samplers.all_samplers`, in its order: k-diffusion, then timestep samplers, then LCM.
SAMPLERS: tuple[SamplerDef, ...] = (
    SamplerDef("DPM++ 2M", "dpmpp_2m", ("k_dpmpp_2m",), (KARRAS,)),
    SamplerDef("DPM++ SDE", "dpmpp_sde", ("k_dpmpp_sde",), (KARRAS, SECOND_ORDER, BROWNIAN),
               uses_eta=True, tunables=_NOISE),
    SamplerDef("DPM++ 2M SDE", "dpmpp_2m_sde", ("k_dpmpp_2m_sde",), (EXPONENTIAL, BROWNIAN),
               uses_eta=True, tunables=_NOISE),
    SamplerDef("DPM++ 2M SDE Heun", "dpmpp_2m_sde_heun", ("k_dpmpp_2m_sde_heun",),
               (EXPONENTIAL, BROWNIAN, ("solver_type", "heun")), uses_eta=True, tunables=_NOISE),
    SamplerDef("DPM++ 2S a", "dpmpp_2s_ancestral", ("k_dpmpp_2s_a",), (KARRAS, ENSD, SECOND_ORDER),
               uses_eta=True, tunables=_NOISE),
    SamplerDef("DPM++ 3M SDE", "dpmpp_3m_sde", ("k_dpmpp_3m_sde",), (EXPONENTIAL, DISCARD, BROWNIAN),
               uses_eta=True, tunables=_NOISE),
    SamplerDef("Euler a", "euler_ancestral", ("k_euler_a", "k_euler_ancestral"), (ENSD,), uses_eta=True),
    SamplerDef("Euler", "euler", ("k_euler",), tunables=_CHURN),
    SamplerDef("LMS", "lms", ("k_lms",)),
    SamplerDef("Heun", "heun", ("k_heun",), (SECOND_ORDER,), tunables=_CHURN),
    SamplerDef("DPM2", "dpm_2", ("k_dpm_2",), (KARRAS, DISCARD, SECOND_ORDER), tunables=_CHURN),
    SamplerDef("DPM2 a", "dpm_2_ancestral", ("k_dpm_2_a",), (KARRAS, DISCARD, ENSD, SECOND_ORDER),
               uses_eta=True, tunables=_NOISE),
    SamplerDef("DPM fast", "dpm_fast", ("k_dpm_fast",), (ENSD,), uses_eta=True, tunables=_NOISE),
    SamplerDef("DPM adaptive", "dpm_adaptive", ("k_dpm_ad",), (ENSD,), uses_eta=True),
    SamplerDef("Restart", "restart", ("restart",), (KARRAS, SECOND_ORDER)),
    SamplerDef("DDIM", "ddim", ("ddim",), family="timesteps", uses_eta=True, default_eta=0.0),
    SamplerDef("DDIM CFG++", "ddim_cfgpp", ("ddim_cfgpp",), family="timesteps", uses_eta=True,
               default_eta=0.0,
               unsupported="DDIM CFG++ needs the unconditional noise prediction separately, which the "
                           "denoising loop does not hand to the sampler; use 'DDIM'"),
    SamplerDef("PLMS", "plms", ("plms",), family="timesteps"),
    SamplerDef("UniPC", "unipc", ("unipc",), family="timesteps"),
    SamplerDef("LCM", "lcm", ("k_lcm",), family="lcm"),
)

# A1111 v1.10.1 `sd_schedulers.schedulers`, in its order.
SCHEDULES: tuple[ScheduleDef, ...] = (
    ScheduleDef(AUTOMATIC, "Automatic"),
    ScheduleDef("uniform", "Uniform", need_inner_model=True),
    ScheduleDef("karras", "Karras", default_rho=7.0),
    ScheduleDef("exponential", "Exponential"),
    ScheduleDef("polyexponential", "Polyexponential", default_rho=1.0),
    ScheduleDef("sgm_uniform", "SGM Uniform", ("SGMUniform",), need_inner_model=True),
    ScheduleDef("kl_optimal", "KL Optimal"),
    ScheduleDef("align_your_steps", "Align Your Steps"),
    ScheduleDef("simple", "Simple", need_inner_model=True),
    ScheduleDef("normal", "Normal", need_inner_model=True),
    ScheduleDef("ddim", "DDIM", need_inner_model=True),
    ScheduleDef("beta", "Beta", need_inner_model=True),
)


@dataclass(frozen=True)
class SamplerChoice:
    """A resolved (sampler, schedule type) pair.

    `schedule` is the label A1111 reports (`Schedule type: Karras`) and `schedule_name` the schedule function
    used. "Automatic" remains only when the sampler has no default schedule: the model's own (uniform) sigmas
    are used and A1111 prints no schedule type. Timestep samplers (DDIM, PLMS, UniPC) accept a schedule but
    ignore it.
    """

    sampler: str
    schedule: str
    schedule_name: str
    definition: SamplerDef = field(repr=False)

    @property
    def second_order(self) -> bool:
        return self.definition.second_order

    @property
    def brownian_noise(self) -> bool:
        return self.definition.brownian_noise

    @property
    def uses_ensd(self) -> bool:
        return self.definition.uses_ensd

    @property
    def discard_next_to_last_sigma(self) -> bool:
        return self.definition.discard_next_to_last_sigma

    @property
    def ignores_schedule(self) -> bool:
        return self.definition.ignores_schedule


def _sampler_index() -> dict[str, SamplerDef]:
    return {name.casefold(): row for row in SAMPLERS for name in (row.name, *row.aliases)}


def _schedule_index() -> dict[str, ScheduleDef]:
    return {name.casefold(): row for row in SCHEDULES for name in (row.label, row.name, *row.aliases)}


def _split_schedule_suffix(name: str, schedules: dict[str, ScheduleDef]) -> tuple[str, ScheduleDef | None]:
    """'DPM++ 2M Karras' -> ('DPM++ 2M', Karras): pre-v1.9 combined names, with any schedule spelling."""
    folded = name.casefold()
    for spelling in sorted(schedules, key=len, reverse=True):
        if folded.endswith(" " + spelling):
            return name[: -len(spelling) - 1].rstrip(), schedules[spelling]
    return name, None


def resolve_sampler(sampler_name: str | None, scheduler: str | None, *, field: str = "sampler_name",
                    scheduler_field: str = "scheduler") -> SamplerChoice:
    """Resolve a sampler and schedule type like A1111 v1.10 `get_sampler_and_scheduler`, minus its fallbacks.

    Accepts display names and aliases (case-insensitive), old combined names ("DPM++ SDE Karras"), and
    schedule labels, names or aliases. A schedule in the sampler name wins over `scheduler`, as in A1111.
    Unlike A1111, an unknown sampler or schedule raises NotFoundError listing the valid names instead of
    silently running "DPM++ 2M" / Automatic.

    Raises:
        NotFoundError: unknown sampler (`field`) or schedule type (`scheduler_field`).
        UnsupportedError: a sampler A1111 has that this worker cannot run.
    """
    samplers, schedules = _sampler_index(), _schedule_index()
    requested = (sampler_name or DEFAULT_SAMPLER).strip()
    schedule = schedules[AUTOMATIC]
    if scheduler:
        schedule = schedules.get(scheduler.strip().casefold())
        if schedule is None:
            valid = [name for row in SCHEDULES for name in (row.label, row.name)]
            raise NotFoundError(scheduler_field,
                                f"unknown schedule type {scheduler!r}; valid: {choices(valid)}")

    row = samplers.get(requested.casefold())
    if row is None:
        base, suffix_schedule = _split_schedule_suffix(requested, schedules)
        row = samplers.get(base.casefold()) if suffix_schedule else None
        if row is None:
            # Only what this worker runs: a sampler listed here must not then be refused as unsupported.
            valid = [name for definition in SAMPLERS if not definition.unsupported
                     for name in (definition.name, *definition.aliases)]
            raise NotFoundError(field, f"unknown sampler {sampler_name!r}; valid: {choices(valid)}")
        if schedule.name not in (AUTOMATIC, suffix_schedule.name):
            logger.warning("%s %r names schedule %s; ignoring %s=%r as A1111 does", field, sampler_name,
                           suffix_schedule.label, scheduler_field, scheduler)
        schedule = suffix_schedule

    if row.unsupported:
        raise UnsupportedError(field, row.unsupported)
    if schedule.name == AUTOMATIC and row.default_schedule:
        schedule = schedules[row.default_schedule]
    return SamplerChoice(sampler=row.name, schedule=schedule.label, schedule_name=schedule.name,
                         definition=row)


def sampler_list() -> list[dict]:
    """GET /sdapi/v1/samplers: `[{"name", "aliases", "options"}]` in A1111's order, minus unsupported ones."""
    return [
        {"name": row.name, "aliases": list(row.aliases), "options": dict(row.options)}
        for row in SAMPLERS if not row.unsupported
    ]


def scheduler_list() -> list[dict]:
    """GET /sdapi/v1/schedulers: `[{"name", "label", "aliases", "default_rho", "need_inner_model"}]`."""
    return [
        {"name": row.name, "label": row.label, "aliases": list(row.aliases) or None,
         "default_rho": row.default_rho, "need_inner_model": row.need_inner_model}
        for row in SCHEDULES
    ]


@dataclass(frozen=True)
class SamplerOptions:
    """Sampler knobs from the request and A1111's settings, with A1111's defaults.

    eta: None = the sampler's default (A1111 `eta_ancestral` 1.0 for k-diffusion samplers, `eta_ddim` 0.0 for
        DDIM).
    s_noise, s_churn, s_tmin, s_tmax: Karras noise knobs, used only by the samplers A1111 passes them to;
        s_tmax 0 means infinity, as in A1111.
    sigma_min, sigma_max, rho: schedule overrides, 0 = the model's / the schedule's default.
    always_discard_next_to_last_sigma, use_old_karras_scheduler_sigmas, sgm_noise_multiplier,
    beta_dist_alpha, beta_dist_beta, uni_pc_*: A1111 settings of the same names.
    randn_source: "GPU" or "CPU", for the Brownian trees (the image generators are made by `ImageNoise`).
    sdxl: the checkpoint is SDXL (Align Your Steps has a separate table for it).
    """

    eta: float | None = None
    s_noise: float = 1.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    always_discard_next_to_last_sigma: bool = False
    use_old_karras_scheduler_sigmas: bool = False
    sgm_noise_multiplier: bool = False
    beta_dist_alpha: float = 0.6
    beta_dist_beta: float = 0.6
    uni_pc_variant: str = "bh1"
    uni_pc_skip_type: str = "time_uniform"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    randn_source: str = "GPU"
    sdxl: bool = False
