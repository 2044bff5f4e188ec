"""Prompt matrix: every combination of the prompt's `|`-separated optional parts, one image each, and a grid.

As AUTOMATIC1111/stable-diffusion-webui v1.10 `scripts/prompt_matrix.py` (AGPL-3.0, written anew here):
`script_args` = `[put_at_start, different_seeds, prompt_type ("positive"/"negative"), variations_delimiter
("comma"/"space"), margin_size]`. The first part is always kept; combination n includes optional part i when
bit i of n is set; all images share one seed unless "different seed". The images run in batches of
`batch_size` (the last one shorter), the grid comes first. Work: 2^(parts − 1) images.
"""

from engine.imaging.grid import draw_prompt_matrix, image_grid
from engine.scripts.args import ScriptArgs
from engine.scripts.results import combine
from engine.translate import fixed_seed


def matrix_prompts(prompt: str, put_at_start: bool, delimiter: str) -> tuple[list[str], list[str]]:
    """(the prompt's parts, the 2^(parts − 1) prompts), in A1111's order."""
    parts = prompt.split("|")
    prompts = []
    for combination in range(2 ** (len(parts) - 1)):
        chosen = [text.strip().strip(",") for bit, text in enumerate(parts[1:]) if combination & (1 << bit)]
        chosen = [*chosen, parts[0]] if put_at_start else [parts[0], *chosen]
        prompts.append(delimiter.join(chosen))
    return parts, prompts


def run(spec, context):
    args = ScriptArgs(spec, context.request.script_args)
    positive = args.choice(2) == "positive"
    delimiter = ", " if args.choice(3) == "comma" else " "
    request = context.request
    source = request.prompt if positive else request.negative_prompt
    original = (source[0] if isinstance(source, list) else source) or ""
    parts, prompts = matrix_prompts(original, args.flag(0), delimiter)
    seed, subseed = fixed_seed(request.seed), fixed_seed(request.subseed)
    seeds = [seed + (index if args.flag(1) else 0) for index in range(len(prompts))]
    batch = max(1, request.batch_size or 1)
    field = "prompt" if positive else "negative_prompt"
    chunks = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        chunks.append((context.variant(**{field: chunk}, batch_size=len(chunk), n_iter=1, seed=seed,
                                       subseed=subseed + start), seeds[start:start + batch]))
    context.validate(request for request, _ in chunks)
    results = [context.run(chunk_request, chunk_seeds) for chunk_request, chunk_seeds in chunks]
    images = [image for result in results for image in result.images]
    infotexts = [text for result in results for text in result.infotexts]
    grid = image_grid(images, rows=1 << ((len(parts) - 1) // 2))
    grid = draw_prompt_matrix(grid, images[0].width, images[0].height, parts, args.integer(4))
    return combine(results, [grid, *images], [infotexts[0], *infotexts], index_of_first_image=1)

