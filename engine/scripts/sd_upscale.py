"""SD upscale (img2img): upscale the init image, then redraw it tile by tile with img2img and feather the
tiles back together.

As AUTOMATIC1111/stable-diffusion-webui v1.10 `scripts/sd_upscale.py` (AGPL-3.0, written anew here):
`script_args` = `[info, overlap, upscaler (index into /sdapi/v1/upscalers or name), scale_factor]`. The image
is flattened on white, upscaled (not at all for "None"), cut into width × height tiles overlapping by at least
`overlap` (A1111's `split_grid`), each batch of `batch_size` tiles redrawn with the request's settings from
seed, seed + 1, … (one per batch, as A1111 advances it), and `combine_grid` feathers them back. `n_iter`
repeats the whole upscale from seed + n. Work: tiles × img2img steps, per repeat.
"""

import math

from PIL import Image

from engine.errors import RequestError, UnsupportedError
from engine.imaging.decode import decode_image
from engine.imaging.png import png_base64
from engine.scripts.args import ScriptArgs
from engine.scripts.results import combine, infotext_with
from engine.translate import fixed_seed
from engine.upscale.grid import Grid, Tile, combine_grid, split_grid, tile_origins


def flatten(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """A1111 `images.flatten`: transparent images composited on the img2img background colour (white)."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        canvas = Image.new("RGBA", image.size, background)
        canvas.alpha_composite(image.convert("RGBA"))
        return canvas.convert("RGB")
    return image.convert("RGB")


def upscaler_name(value, listing: list[dict], where: str) -> str:
    """The upscaler an arg names: an index into `/sdapi/v1/upscalers` (A1111's radio) or a name (any case)."""
    names = [item["name"] for item in listing]
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= int(value) < len(names):
        return names[int(value)]
    if isinstance(value, str):
        found = [name for name in names if name.lower() == value.strip().lower()]
        if found:
            return found[0]
    raise RequestError(where, f"must be an index into or a name of the upscalers {names}, got {value!r:.40}")


def tile_grid(image: Image.Image, width: int, height: int, overlap: int) -> Grid:
    if not 0 <= overlap < min(width, height):
        raise RequestError("script_args[1]", f"tile overlap must be in [0, {min(width, height)}), got {overlap}")
    return split_grid(image, width, height, overlap)


def run(spec, context):
    args = ScriptArgs(spec, context.request.script_args)
    request = context.request
    if request.mask:
        raise UnsupportedError("mask", "SD upscale redraws the whole image; a mask is not supported with it")
    overlap, scale = args.integer(1), args.number(3)
    name = upscaler_name(args.raw(2), context.upscalers.listing(), args.where(2))
    limits = context.settings.limits_for_images("init_images")
    image = flatten(decode_image(request.init_images[0], "init_images[0]", limits)[0])
    _check_work(image.size, scale if name != "None" else 1.0, request, overlap, context.settings, args.where(3))
    if name != "None":
        image = context.upscalers.pixel(name, args.where(2)).upscale(image, scale)
    width, height = request.width // 8 * 8, request.height // 8 * 8
    grid = tile_grid(image, width, height, overlap)
    tiles = [tile for row in grid.rows for tile in row]
    batch = max(1, request.batch_size or 1)
    seed = fixed_seed(request.seed)
    params = {"SD upscale overlap": overlap, "SD upscale upscaler": name}
    results, upscaled = [], []
    for repeat in range(max(1, request.n_iter or 1)):
        batch_seed, redrawn = seed + repeat, []
        for start in range(0, len(tiles), batch):
            chunk = tiles[start:start + batch]
            tile_request = context.variant(init_images=[png_base64(tile.image, None) for tile in chunk],
                                           batch_size=batch, n_iter=1, seed=batch_seed)
            if not results:
                context.validate([tile_request])
            result = context.run(tile_request)
            results.append(result)
            redrawn += result.images
            batch_seed += 1  # A1111: the next batch starts at this batch's first seed + 1
        upscaled.append(_reassemble(grid, redrawn))
    infotext = infotext_with(results[0].infotexts[0], params)
    return combine(results, upscaled, [infotext] * len(upscaled),
                   info={"all_seeds": [seed + repeat for repeat in range(len(upscaled))]})


def _check_work(size: tuple[int, int], scale: float, request, overlap: int, settings, field: str) -> None:
    """The upscaled size and the tiles to redraw within the worker's limits, before anything is upscaled."""
    if not math.isfinite(scale) or scale <= 0:
        raise RequestError(field, f"the scale must be a finite number above 0, got {scale}")
    # `Upscaler.upscale`'s destination: each side times `scale`, rounded down to a multiple of 8.
    width, height = (int(side * scale) // 8 * 8 if scale != 1.0 else side for side in size)
    if width * height > settings.max_pixels:
        raise RequestError(field, f"the upscaled image would be {width}x{height}; at most {settings.max_pixels} "
                                  "pixels accepted")
    tile_width, tile_height = request.width // 8 * 8, request.height // 8 * 8
    if not 0 <= overlap < min(tile_width, tile_height):
        return  # tile_grid names the overlap
    tiles = len(tile_origins(width, tile_width, overlap)) * len(tile_origins(height, tile_height, overlap))
    repeats = max(1, request.n_iter or 1)
    if tiles * repeats > settings.max_script_generations:
        raise RequestError(field, f"{tiles} tiles × n_iter {repeats} = {tiles * repeats} tiles to redraw; at most "
                                  f"{settings.max_script_generations} accepted")


def _reassemble(grid: Grid, images: list[Image.Image]) -> Image.Image:
    """The redrawn tiles in the grid's places (a black tile where a batch came back short), feathered."""
    redrawn = iter(images)
    rows = tuple(
        tuple(Tile(tile.x, tile.y, next(redrawn, Image.new("RGB", (grid.tile_width, grid.tile_height))))
              for tile in row)
        for row in grid.rows
    )
    return combine_grid(Grid(rows, grid.tile_width, grid.tile_height, grid.width, grid.height, grid.overlap))
