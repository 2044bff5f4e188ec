"""A1111's PIL-space tile grid (`images.split_grid` / `combine_grid`): where tiles sit and how they are blended.

ESRGAN-family upscalers run tile by tile on this grid; reproducing it keeps edge pixels as A1111 makes them
(a whole-image or larger-tile pass changes every pixel near a tile border). No torch here.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Tile:
    """One tile: its top-left corner in the full image (negative when the image is smaller than a tile)."""

    x: int
    y: int
    image: Image.Image


@dataclass(frozen=True)
class Grid:
    """Rows of tiles (top to bottom, each left to right) covering a `width` × `height` image."""

    rows: tuple[tuple[Tile, ...], ...]
    tile_width: int
    tile_height: int
    width: int
    height: int
    overlap: int


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles start along one axis, as A1111's `split_grid` places them.

    As many tiles as needed for neighbours to share at least `overlap` pixels, spread evenly, the last one
    flush with the far edge. An image shorter than a tile gets one tile at `length - tile` (< 0): PIL pads
    that crop with black, and A1111's model sees the black border too.

    Args:
        length: image width or height in pixels.
        tile: tile width or height in pixels.
        overlap: pixels neighbouring tiles share at least; smaller than `tile`.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, {tile}), got {overlap}")
    # A1111 would make zero tiles (a black result) for an image narrower than the overlap; one tile is right.
    count = max(1, math.ceil((length - overlap) / (tile - overlap)))
    spacing = (length - tile) / (count - 1) if count > 1 else 0
    origins = []
    for index in range(count):
        origin = int(index * spacing)
        if origin + tile >= length:
            origin = length - tile
        origins.append(origin)
    return origins


def split_grid(image: Image.Image, tile_width: int, tile_height: int, overlap: int) -> Grid:
    """Cut `image` into overlapping tiles of exactly `tile_width` × `tile_height` pixels."""
    xs = tile_origins(image.width, tile_width, overlap)
    ys = tile_origins(image.height, tile_height, overlap)
    rows = tuple(
        tuple(Tile(x, y, image.crop((x, y, x + tile_width, y + tile_height))) for x in xs) for y in ys
    )
    return Grid(rows, tile_width, tile_height, image.width, image.height, overlap)


def transform_tiles(grid: Grid, transform: Callable[[Image.Image], Image.Image]) -> Grid:
    """Apply `transform` to every tile, left to right and top to bottom.

    The transform may enlarge tiles by an integer factor (an upscaling model); the grid's geometry is scaled by
    the factor read from the output width, as A1111's `upscale_with_model` does.
    """
    outputs = [[transform(tile.image) for tile in row] for row in grid.rows]
    factor = outputs[0][0].width // grid.tile_width
    rows = tuple(
        tuple(Tile(tile.x * factor, tile.y * factor, output) for tile, output in zip(row, row_outputs, strict=True))
        for row, row_outputs in zip(grid.rows, outputs, strict=True)
    )
    return Grid(
        rows,
        grid.tile_width * factor,
        grid.tile_height * factor,
        grid.width * factor,
        grid.height * factor,
        grid.overlap * factor,
    )


def blend_ramp(overlap: int) -> np.ndarray:
    """The weight (0-255) a tile gets over its predecessor across the `overlap` shared pixels.

    A1111's `combine_grid` mask: `r * 255 / overlap` truncated to uint8, rising from 0 (keep the previous
    tile) and never reaching 255; past the overlap the new tile simply covers the old one.
    """
    return (np.arange(overlap, dtype=np.int64) * 255 // overlap).astype(np.uint8)


def combine_grid(grid: Grid) -> Image.Image:
    """Paste the tiles back into one RGB image: each row left to right, then the rows top to bottom,
    feathering every seam over the grid's `overlap` pixels with `blend_ramp`."""
    ramp = blend_ramp(grid.overlap)
    combined = Image.new("RGB", (grid.width, grid.height))
    for row in grid.rows:
        strip = Image.new("RGB", (grid.width, grid.tile_height))
        for tile in row:
            piece = tile.image if tile.image.mode == "RGB" else tile.image.convert("RGB")
            _paste_feathered(strip, piece, tile.x, ramp, horizontal=True)
        _paste_feathered(combined, strip, row[0].y, ramp, horizontal=False)
    return combined


def _paste_feathered(canvas: Image.Image, piece: Image.Image, offset: int, ramp: np.ndarray, horizontal: bool) -> None:
    """Paste `piece` at `offset` along one axis. Unless it starts the canvas, its first `len(ramp)` columns
    (or rows) blend into what is there, and the rest covers it.

    A1111 blends every tile not at exactly 0, so a lone tile starting just above or left of the image (a side
    of 185-191 px with 192-px tiles) is blended into the black canvas: dark edge rows. Here any tile starting
    at or before the edge is pasted whole, which is the same wherever A1111's blend falls off-canvas.
    """
    overlap = len(ramp)
    at = (offset, 0) if horizontal else (0, offset)
    if offset <= 0 or overlap == 0:
        canvas.paste(piece, at)
        return
    if horizontal:
        mask = np.repeat(ramp[None, :], piece.height, axis=0)
        head, tail = (0, 0, overlap, piece.height), (overlap, 0, piece.width, piece.height)
        tail_at = (offset + overlap, 0)
    else:
        mask = np.repeat(ramp[:, None], piece.width, axis=1)
        head, tail = (0, 0, piece.width, overlap), (0, overlap, piece.width, piece.height)
        tail_at = (0, offset + overlap)
    canvas.paste(piece.crop(head), at, Image.fromarray(mask, "L"))
    canvas.paste(piece.crop(tail), tail_at)
