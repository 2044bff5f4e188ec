"""Loopback (img2img): feed each result back in as the next init image, the strength moving along a curve.

As AUTOMATIC1111/stable-diffusion-webui v1.10 `scripts/loopback.py` (AGPL-3.0, written anew here):
`script_args` = `[loops, final_denoising_strength, denoising_curve ("Aggressive"/"Linear"/"Lazy"),
append_interrogation ("None"/"CLIP"/"DeepBooru")]`. One image per loop (batch size 1), seeds advancing by one
per loop, masked content switched to "original" after the first loop; with one batch every loop's image is
returned after a one-row grid of them, with several (`n_iter`) each batch's last image. Work: loops × n_iter
img2img passes.
"""

import math

from engine.errors import RequestError, UnsupportedError
from engine.imaging.grid import image_grid
from engine.imaging.png import png_base64
from engine.scripts.args import ScriptArgs
from engine.scripts.results import combine, infotext_with
from engine.translate import fixed_seed


ORIGINAL_FILL = 1  # inpainting_fill "original"


def strength_at(loop: int, loops: int, initial: float, final: float, curve: str) -> float:
    """A1111 `calculate_denoising_strength`: the strength of loop `loop` (1-based after the first)."""
    if loops == 1:
        return initial
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        share = math.sin(progress * math.pi * 0.5)
    elif curve == "Lazy":
        share = 1 - math.cos(progress * math.pi * 0.5)
    else:
        share = progress
    return initial + (final - initial) * share


def run(spec, context):
    args = ScriptArgs(spec, context.request.script_args)
    loops, final, curve = args.integer(0), args.number(1), args.choice(2)
    if args.choice(3) != "None":
        raise UnsupportedError(args.where(3), "appending an interrogated prompt (CLIP/DeepBooru) is not "
                                              "supported; send \"None\"")
    if loops < 1:
        raise UnsupportedError(args.where(0), f"must be at least 1, got {loops}")
    request = context.request
    batches = max(1, request.n_iter or 1)
    most = context.settings.max_script_generations
    if loops * batches > most:
        raise RequestError(args.where(0), f"{loops} loops × n_iter {batches} = {loops * batches} generations; "
                                          f"at most {most} accepted")
    initial = request.denoising_strength if request.denoising_strength is not None else 0.75
    seed = fixed_seed(request.seed)
    params = {"Final denoising strength": final, "Denoising curve": curve}
    results, history = [], []
    for _ in range(batches):
        init_images, strength, fill, last = request.init_images, initial, request.inpainting_fill, None
        for loop in range(loops):
            step = context.variant(init_images=init_images, denoising_strength=strength, inpainting_fill=fill,
                                   batch_size=1, n_iter=1, seed=seed)
            result = context.run(step)
            results.append(result)
            seed += 1
            strength = strength_at(loop + 1, loops, initial, final, curve)
            last = result.images[0]
            init_images, fill = [png_base64(last, None)], ORIGINAL_FILL
            if batches == 1:
                history.append(last)
        if batches > 1:
            history.append(last)
    infotexts = [infotext_with(result.infotexts[0], params) for result in results]
    images, texts = list(history), infotexts[: len(history)] if batches == 1 else infotexts[loops - 1 :: loops]
    if len(history) > 1:
        images, texts = [image_grid(history, rows=1), *images], [texts[0], *texts]
    return combine(results, images, texts, index_of_first_image=1 if len(history) > 1 else 0)
