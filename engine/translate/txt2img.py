"""A1111 txt2img request → `GenerationPlan`."""

from dataclasses import replace
from typing import Any

from engine.plan import GenerationPlan
from engine.prompts.styles import StyleDatabase
from engine.settings import Settings
from engine.translate.generation import plan_generation, prepare_request
from engine.translate.hires import hires_plan
from engine.wire.txt2img import Txt2ImgRequest


def to_plan(
    request: Txt2ImgRequest,
    settings: Settings,
    defaults: dict[str, Any] | None = None,
    styles: StyleDatabase | None = None,
) -> GenerationPlan:
    """Validate a txt2img request against the worker's limits and translate it (see `plan_generation`);
    `styles` are the prompt styles the request's `styles` names refer to."""
    request, rewrite_warnings, vae_tiling, prompts = prepare_request(request, styles, settings, defaults)
    plan, options = plan_generation(
        request, settings, defaults, prompt_infotext=prompts.infotext, seeds=prompts.seeds
    )
    plan = replace(plan, warnings=plan.warnings + tuple(rewrite_warnings), vae_tiling=vae_tiling)
    if not request.enable_hr:
        return plan
    hires, infotext = hires_plan(request, settings, plan, options)
    return replace(plan, hires=hires, infotext_extra=plan.infotext_extra + infotext)
