"""Outpainting mk2 and Poor man's outpainting (img2img): grow the canvas and inpaint the new border.

As AUTOMATIC1111/stable-diffusion-webui v1.10 `scripts/outpainting_mk_2.py` and
`scripts/poor_mans_outpainting.py` (AGPL-3.0, written anew here). Both round the grown canvas up to multiples
of 64 and share the growth between opposite sides; both inpaint with the whole picture (not "only masked"),
an image mask for the paste-back and a sharper latent mask for the blend.

- mk2 `script_args` = `[info, pixels, mask_blur, directions, noise_q, color_variation]`: one direction at a
  time (left, right, up, down), the new strip filled with matched noise, masked content "original", mask blur
  ×4. Work: one img2img pass per direction and batch.
- Poor man's `script_args` = `[pixels, mask_blur, masked_content, directions]`: the grown canvas cut into
  width × height tiles overlapping by `pixels`; every tile touching the border is inpainted, one at a time,
  seeds advancing by one. Work: one img2img pass per border tile.
"""

import json
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from engine.errors import RequestError, UnsupportedError
from engine.imaging.decode import decode_image
from engine.imaging.grid import image_grid
from engine.imaging.matched_noise import matched_noise
from engine.imaging.png import png_base64
from engine.scripts.args import ScriptArgs
from engine.scripts.results import combine
from engine.translate import fixed_seed
from engine.upscale.grid import Grid, Tile, combine_grid, split_grid
from engine.wire.scripts import DIRECTIONS, INPAINTING_FILLS


ORIGINAL_FILL = 1


def grown_sides(width: int, height: int, pixels: int, directions: list[str]) -> dict[str, int]:
    """Pixels added per side: the canvas rounded up to multiples of 64, shared between opposite sides."""
    sides = {side: pixels if side in directions else 0 for side in DIRECTIONS}
    target_w = math.ceil((width + sides["left"] + sides["right"]) / 64) * 64
    target_h = math.ceil((height + sides["up"] + sides["down"]) / 64) * 64
    if sides["left"]:
        sides["left"] = sides["left"] * (target_w - width) // (sides["left"] + sides["right"])
    if sides["right"]:
        sides["right"] = target_w - width - sides["left"]
    if sides["up"]:
        sides["up"] = sides["up"] * (target_h - height) // (sides["up"] + sides["down"])
    if sides["down"]:
        sides["down"] = target_h - height - sides["up"]
    return sides


def _directions(args: ScriptArgs, index: int) -> list[str]:
    directions = args.names(index)
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown:
        raise RequestError(args.where(index), f"directions must be among {list(DIRECTIONS)}, got {unknown}")
    return directions


def _init_image(context) -> Image.Image:
    if context.request.mask:
        raise UnsupportedError("mask", "outpainting makes its own masks; send no mask")
    limits = context.settings.limits_for_images("init_images")
    return decode_image(context.request.init_images[0], "init_images[0]", limits)[0].convert("RGB")


# --- Outpainting mk2 ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expansion:
    """One image grown in one direction: the canvas (the strip filled with matched noise), the crop A1111
    sends to img2img with its image mask and latent mask, and the grown size to keep afterwards."""

    canvas: Image.Image
    crop: Image.Image
    mask: Image.Image
    latent_mask: Image.Image
    grown: tuple[int, int]


def expand(image: Image.Image, pixels: int, side: str, blur: tuple[int, int], size: tuple[int, int],
           noise: tuple[float, float]) -> Expansion:
    """A1111 mk2's `expand` for one image; `size` is the request's width × height, `noise` (noise_q,
    color_variation)."""
    horizontal = side in ("left", "right")
    grow_x, grow_y = (pixels, 0) if horizontal else (0, pixels)
    res_w, res_h = image.width + grow_x, image.height + grow_y
    canvas_w, canvas_h = math.ceil(res_w / 64) * 64, math.ceil(res_h / 64) * 64
    canvas = Image.new("RGB", (canvas_w, canvas_h))
    canvas.paste(image, (grow_x if side == "left" else 0, grow_y if side == "up" else 0))

    def rectangle(width: int, height: int, spread: int) -> tuple[int, int, int, int]:
        return (pixels + blur[0] * spread if side == "left" else 0,
                pixels + blur[1] * spread if side == "up" else 0,
                width - pixels - blur[0] * spread if side == "right" else res_w,
                height - pixels - blur[1] * spread if side == "down" else res_h)

    mask = Image.new("RGB", (canvas_w, canvas_h), "white")
    ImageDraw.Draw(mask).rectangle(rectangle(canvas_w, canvas_h, 1), fill="black")
    noised = matched_noise(np.asarray(canvas) / 255.0, np.asarray(mask) / 255.0, *noise)
    filled = Image.fromarray(np.clip(noised * 255.0, 0, 255).astype(np.uint8), "RGB")
    target_w = min(size[0], image.width + grow_x) if horizontal else canvas_w
    target_h = min(size[1], image.height + grow_y) if not horizontal else canvas_h
    crop = (0 if side == "left" else canvas_w - target_w, 0 if side == "up" else canvas_h - target_h,
            target_w if side == "left" else canvas_w, target_h if side == "up" else canvas_h)
    mask = mask.crop(crop)
    latent = Image.new("RGB", (target_w, target_h), "white")
    ImageDraw.Draw(latent).rectangle(rectangle(mask.width, mask.height, 2), fill="black")
    return Expansion(filled, filled.crop(crop), mask, latent, (res_w, res_h))


def run_mk2(spec, context):
    args = ScriptArgs(spec, context.request.script_args)
    pixels, blur = args.integer(1), args.integer(2)
    directions = _directions(args, 3)
    noise = (args.number(4), args.number(5))
    original = _init_image(context)
    request = context.request
    sides = grown_sides(original.width, original.height, pixels, directions)
    if not any(sides.values()):
        raise RequestError(args.where(3), "no direction to outpaint")
    blur_xy = (blur if sides["left"] or sides["right"] else 0, blur if sides["up"] or sides["down"] else 0)
    batch = max(1, request.batch_size or 1)
    results, finished, seeds = [], [], []
    for _ in range(max(1, request.n_iter or 1)):
        images = [original] * batch
        for side in DIRECTIONS:
            if sides[side]:
                images = _mk2_pass(context, images, side, sides[side], blur_xy, noise, results)
                if len(seeds) < len(finished) + len(images):
                    seeds += json.loads(results[-1].info)["all_seeds"]  # each image's first-pass seed
        finished += images
    # A1111 puts a grid first when there are several images (`grid_only_if_multiple`).
    returned = [image_grid(finished), *finished] if len(finished) > 1 else finished
    first = results[0].infotexts[0]
    return combine(results, returned, [first] * len(returned), index_of_first_image=len(returned) - len(finished),
                   seeds=seeds)


def _mk2_pass(context, images, side, pixels, blur, noise, results):
    """One direction for the batch: every image grown, one img2img pass over the crops, pasted back."""
    request = context.request
    size = (request.width // 8 * 8, request.height // 8 * 8)
    grown = [expand(image, pixels, side, blur, size, noise) for image in images]
    first = grown[0]
    step = context.variant(
        init_images=[png_base64(item.crop, None) for item in grown],
        mask=png_base64(first.mask, None), latent_mask=png_base64(first.latent_mask, None),
        width=first.crop.width, height=first.crop.height, batch_size=len(images), n_iter=1,
        inpaint_full_res=False, inpainting_fill=ORIGINAL_FILL, mask_blur=None,
        mask_blur_x=blur[0] * 4, mask_blur_y=blur[1] * 4,
    )
    if not results:
        context.validate([step])
    result = context.run(step)
    results.append(result)
    outputs = []
    for item, generated in zip(grown, result.images, strict=False):
        canvas = item.canvas.copy()
        canvas.paste(generated, (0 if side == "left" else canvas.width - generated.width,
                                 0 if side == "up" else canvas.height - generated.height))
        outputs.append(canvas.crop((0, 0, *item.grown)))
    return outputs


# --- Poor man's outpainting ---------------------------------------------------------------------------------


def run_poor_mans(spec, context):
    args = ScriptArgs(spec, context.request.script_args)
    pixels, blur = args.integer(0), args.integer(1)
    fill = INPAINTING_FILLS.index(args.choice(2))
    directions = _directions(args, 3)
    original = _init_image(context)
    request = context.request
    sides = grown_sides(original.width, original.height, pixels, directions)
    canvas = Image.new("RGB", (original.width + sides["left"] + sides["right"],
                               original.height + sides["up"] + sides["down"]))
    canvas.paste(original, (sides["left"], sides["up"]))
    mask = _border_mask(canvas.size, sides, blur * 2)
    latent_mask = _border_mask(canvas.size, sides, blur // 2)
    width, height = request.width // 8 * 8, request.height // 8 * 8
    if not 0 <= pixels < min(width, height):
        raise RequestError(args.where(0), f"must be below the tile size {min(width, height)}, got {pixels}")
    grids = [split_grid(image, width, height, pixels) for image in (canvas, mask, latent_mask)]
    border = [index for index, tile in enumerate(_tiles(grids[0])) if _touches_border(tile, width, height,
                                                                                        canvas.size, sides)]
    seed = fixed_seed(request.seed)
    results = []
    for offset, index in enumerate(border):
        tile, tile_mask, tile_latent = (_tiles(grid)[index] for grid in grids)
        step = context.variant(
            init_images=[png_base64(tile.image, None)], mask=png_base64(tile_mask.image, None),
            latent_mask=png_base64(tile_latent.image, None), batch_size=1, n_iter=1, seed=seed + offset,
            inpaint_full_res=False, inpainting_fill=fill, mask_blur=blur * 2,
        )
        if offset == 0:
            context.validate([step])
        results.append(context.run(step))
    if not results:
        raise RequestError("script_args[3]", "no direction to outpaint")
    redrawn = dict(zip(border, (result.images[0] for result in results), strict=True))
    combined = _reassemble(grids[0], redrawn)
    return combine(results, [combined], [results[0].infotexts[0]], seeds=[seed])


def _border_mask(size: tuple[int, int], sides: dict[str, int], inset: int) -> Image.Image:
    mask = Image.new("L", size, "white")
    ImageDraw.Draw(mask).rectangle((
        sides["left"] + (inset if sides["left"] else 0),
        sides["up"] + (inset if sides["up"] else 0),
        size[0] - sides["right"] - (inset if sides["right"] else 0),
        size[1] - sides["down"] - (inset if sides["down"] else 0),
    ), fill="black")
    return mask


def _tiles(grid: Grid) -> list[Tile]:
    return [tile for row in grid.rows for tile in row]


def _touches_border(tile: Tile, width: int, height: int, size: tuple[int, int], sides: dict[str, int]) -> bool:
    inside = (tile.x >= sides["left"] and tile.x + width <= size[0] - sides["right"]
              and tile.y >= sides["up"] and tile.y + height <= size[1] - sides["down"])
    return not inside


def _reassemble(grid: Grid, redrawn: dict[int, Image.Image]) -> Image.Image:
    tiles = iter(range(sum(len(row) for row in grid.rows)))
    rows = tuple(tuple(Tile(tile.x, tile.y, redrawn.get(next(tiles), tile.image)) for tile in row)
                 for row in grid.rows)
    return combine_grid(Grid(rows, grid.tile_width, grid.tile_height, grid.width, grid.height, grid.overlap))
