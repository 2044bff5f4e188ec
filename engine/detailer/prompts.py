"""Per-mask prompt, seed and step count of an ADetailer unit (`scripts/!adetailer.py`, v25.3.0)."""

import re
from dataclasses import dataclass


# ADetailer splits `ad_prompt` on "[SEP]" with the whitespace around it.
_SEPARATOR = re.compile(r"\s*\[SEP\]\s*")
_SKIP = re.compile(r"^\s*\[SKIP\]\s*$")
PROMPT_PLACEHOLDER = "[PROMPT]"


@dataclass(frozen=True)
class MaskPrompt:
    """What the inpaint pass of mask `index` uses."""

    index: int  # position of the mask in the unit's mask list
    prompt: str
    negative_prompt: str
    seed: int
    subseed: int


def prompt_segments(ad_prompt: str, main_prompt: str) -> list[str]:
    """ADetailer's `_get_prompt`: one prompt per "[SEP]" segment.

    An empty segment is the image's main prompt; "[PROMPT]" inside a segment is replaced by the main prompt
    with a space on each side (as ADetailer does).
    """
    segments = _SEPARATOR.split(ad_prompt)
    return [main_prompt if not segment else segment.replace(PROMPT_PLACEHOLDER, f" {main_prompt} ")
            for segment in segments]


def mask_prompts(
    mask_count: int,
    ad_prompt: str,
    ad_negative_prompt: str,
    main_prompt: str,
    main_negative_prompt: str,
    seed: int,
    subseed: int,
) -> list[MaskPrompt]:
    """The prompt, negative prompt, seed and subseed of each mask, skipped masks left out.

    Args:
        mask_count: how many masks the unit produced (after merge/invert).
        ad_prompt / ad_negative_prompt: the unit's prompts (may hold "[SEP]", "[PROMPT]", "[SKIP]").
        main_prompt / main_negative_prompt: the image's prompts as A1111 keeps them in `all_prompts` (styles
            applied, extra-network tags still in: the inpaint pass parses them again).
        seed / subseed: the image's seed and variation seed.

    Mask j uses segment `min(j, len(segments) − 1)` and seed + j, subseed + j (j counts skipped masks too);
    a mask whose prompt is "[SKIP]" is not inpainted.
    """
    prompts = prompt_segments(ad_prompt, main_prompt)
    negatives = prompt_segments(ad_negative_prompt, main_negative_prompt)
    plan = []
    for j in range(mask_count):
        prompt = prompts[min(j, len(prompts) - 1)]
        if _SKIP.match(prompt):
            continue
        plan.append(MaskPrompt(j, prompt, negatives[min(j, len(negatives) - 1)], seed + j, subseed + j))
    return plan


def inpaint_steps(steps: int, denoising_strength: float) -> tuple[int, int]:
    """(steps_total, steps_run) of an A1111 img2img pass without `img2img_fix_steps` (ADetailer's case).

    A1111 `setup_img2img_steps`: t_enc = int(min(denoise, 0.999) · steps); the sampler then runs the last
    t_enc + 1 steps of a `steps`-step schedule (`sigmas[steps − t_enc − 1:]`). 28 steps at 0.4 → (28, 12).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return steps, int(min(denoising_strength, 0.999) * steps) + 1
