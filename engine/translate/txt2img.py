"""A1111 txt2img request → `GenerationPlan`."""

from dataclasses import replace
from typing import Any

from engine.plan import GenerationPlan
from engine.settings import Settings
from engine.translate.generation import plan_generation
from engine.translate.hires import hires_plan
from engine.wire.txt2img import Txt2ImgRequest


def to_plan(
    request: Txt2ImgRequest, settings: Settings, defaults: dict[str, Any] | None = None
) -> GenerationPlan:
    """Validate a txt2img request against the worker's limits and translate it (see `plan_generation`)."""
    plan, options = plan_generation(request, settings, defaults)
    if not request.enable_hr:
        return plan
    hires, infotext = hires_plan(request, settings, plan, options)
    return replace(plan, hires=hires, infotext_extra=plan.infotext_extra + infotext)
