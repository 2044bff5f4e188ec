"""X/Y/Z plot: one generation per combination of up to three axes' values, returned as labelled grids.

As AUTOMATIC1111/stable-diffusion-webui v1.10 `scripts/xyz_grid.py` (AGPL-3.0, written anew here):
`script_args` = `[x_type, x_values, x_values_dropdown, y_type, …, z_values_dropdown, draw_legend,
include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x, vary_seeds_y, vary_seeds_z,
margin_size, csv_mode]`. Seeds of -1 are fixed first (one seed for the whole grid) unless "Keep -1 for
seeds"; each cell keeps the first image of its generation; costlier axes (checkpoints) change in the outer
loop; the response holds the grid of Z grids, then the X/Y sub-grids and the cells when asked for. Work:
one generation per cell, so UNet calls = cells × one generation's calls.
"""

import itertools
from dataclasses import dataclass
from typing import Any

from PIL import Image

from engine.errors import RequestError
from engine.imaging.grid import GridAnnotation, draw_grid_annotations, image_grid, labels
from engine.scripts.args import ScriptArgs
from engine.scripts.axes import Axis, axis_values, find_axis, fix_seeds
from engine.scripts.results import combine, infotext_with
from engine.translate import fixed_seed


TITLE = "X/Y/Z plot"
# A1111's `img_max_size_mp` default: a bigger grid is refused before any work.
MAX_GRID_MEGAPIXELS = 200


@dataclass(frozen=True)
class AxisChoice:
    axis: Axis
    values: list[Any]
    text: str  # what the infotext's "X Values" shows

    def changes(self, request, value) -> dict[str, Any]:
        return self.axis.apply(request, value, self.values)


def _axis(args: ScriptArgs, offset: int, img2img: bool, max_values: int) -> AxisChoice:
    axis = find_axis(args.raw(offset), img2img, args.where(offset))
    if axis.unsupported:
        axis.apply(None, None, [])  # raises its UnsupportedError
    listed = args.raw(offset + 2)
    listed = [str(value) for value in listed] if isinstance(listed, list) and listed else None
    use_list = axis.has_choices and listed is not None and not args.flag(17)
    values = axis_values(axis, args.text(offset + 1), listed if use_list else None, args.where(offset + 1),
                         max_values)
    text = ",".join(listed) if use_list else args.text(offset + 1)
    return AxisChoice(axis, values, text)


def run(spec, context):
    args = ScriptArgs(spec, context.request.script_args)
    most = context.settings.max_script_generations
    x, y, z = (_axis(args, offset, context.img2img, most) for offset in (0, 3, 6))
    keep_random = args.flag(12)
    request = context.request
    base: dict[str, Any] = {}
    if not keep_random:
        # A1111 `fix_seed`: the grid shares one seed (and variation seed) unless an axis changes them.
        base = {"seed": fixed_seed(request.seed), "subseed": fixed_seed(request.subseed)}
        x, y, z = (AxisChoice(a.axis, fix_seeds(a.axis, a.values), a.text) for a in (x, y, z))
    _check_size(request, x, y, z, most)
    vary = (args.flag(13), args.flag(14), args.flag(15))
    cells = {}
    for ix, iy, iz in _loop_order(x, y, z):
        cells[ix, iy, iz] = _cell_request(context, base, (x, y, z), (ix, iy, iz), vary)
    context.validate(cells.values())
    results = {index: context.run(cell) for index, cell in cells.items()}
    return _assemble(results, x, y, z, args, keep_random)


def _check_size(request, x: AxisChoice, y: AxisChoice, z: AxisChoice, max_cells: int) -> None:
    """A1111's grid size limit, and the worker's on the generations (one per cell)."""
    sizes = (len(x.values), len(y.values), len(z.values))
    if sizes[0] * sizes[1] * sizes[2] > max_cells:
        raise RequestError("script_args", f"the grid has {sizes[0]}x{sizes[1]}x{sizes[2]} = "
                                          f"{sizes[0] * sizes[1] * sizes[2]} cells; at most {max_cells} accepted")
    megapixels = round(len(x.values) * len(y.values) * len(z.values) * request.width * request.height / 1e6)
    if megapixels >= MAX_GRID_MEGAPIXELS:
        raise RequestError("script_args", f"the grid would be {megapixels} megapixels; A1111 allows less than "
                                          f"{MAX_GRID_MEGAPIXELS}")


def _loop_order(x: AxisChoice, y: AxisChoice, z: AxisChoice) -> list[tuple[int, int, int]]:
    """Cell indices in A1111's processing order: the costliest axis outermost (z, then y, when equal)."""
    costs = {"x": x.axis.cost, "y": y.axis.cost, "z": z.axis.cost}
    first, second = "z", "y"
    for axis, others in (("x", "yz"), ("y", "xz"), ("z", "xy")):
        if all(costs[axis] > costs[other] for other in others):
            first = axis
            second = others[0] if costs[others[0]] > costs[others[1]] else others[1]
            break
    order = [first, second, *(axis for axis in "xyz" if axis not in (first, second))]
    sizes = {"x": len(x.values), "y": len(y.values), "z": len(z.values)}
    indices = []
    for combination in itertools.product(*(range(sizes[axis]) for axis in order)):
        position = dict(zip(order, combination, strict=True))
        indices.append((position["x"], position["y"], position["z"]))
    return indices


def _cell_request(context, base_changes, axes, index, vary):
    """The request of one cell: the axes' changes applied in X, Y, Z order, then the seed varied."""
    changes = dict(base_changes)
    cell = context.variant(**changes)
    for choice, position in zip(axes, index, strict=True):
        applied = choice.changes(cell, choice.values[position])
        changes.update(applied)
        cell = cell.model_copy(update=applied)
    x_count, y_count = len(axes[0].values), len(axes[1].values)
    offset = index[0] if vary[0] else 0
    offset += index[1] * (x_count if vary[0] else 1) if vary[1] else 0
    offset += index[2] * (x_count if vary[0] else 1) * (y_count if vary[1] else 1) if vary[2] else 0
    if offset:
        cell = cell.model_copy(update={"seed": (cell.seed or 0) + offset})
    return cell


def _params(axis_name: str, choice: AxisChoice, keep_random: bool) -> dict[str, Any]:
    if choice.axis.label == "Nothing":
        return {}
    params = {f"{axis_name} Type": choice.axis.label, f"{axis_name} Values": choice.text}
    if choice.axis.label in ("Seed", "Var. seed") and not keep_random:
        params[f"Fixed {axis_name} Values"] = ", ".join(str(value) for value in choice.values)
    return params


def _assemble(results, x: AxisChoice, y: AxisChoice, z: AxisChoice, args: ScriptArgs, keep_random: bool):
    nx, ny, nz = len(x.values), len(y.values), len(z.values)
    ordered = [results[ix, iy, iz] for iz in range(nz) for iy in range(ny) for ix in range(nx)]
    cells = [result.images[0] for result in ordered]
    legend, margin = args.flag(9), args.integer(16)
    sub_grids = []
    for iz in range(nz):
        images = cells[iz * nx * ny:(iz + 1) * nx * ny]
        grid = image_grid(images, rows=ny)
        if legend:
            width, height = map(max, zip(*(image.size for image in images), strict=True))
            grid = draw_grid_annotations(grid, width, height, labels([x.axis.format(v) for v in x.values]),
                                         labels([y.axis.format(v) for v in y.values]), margin)
        sub_grids.append(grid)
    main = image_grid(sub_grids, rows=1)
    if legend:
        width, height = map(max, zip(*(image.size for image in sub_grids), strict=True))
        main = draw_grid_annotations(main, width, height, labels([z.axis.format(v) for v in z.values]),
                                     [[GridAnnotation()]])
    xy_params = {"Script": TITLE, **_params("X", x, keep_random), **_params("Y", y, keep_random)}
    sub_infotexts = [infotext_with(results[0, 0, iz].infotexts[0], xy_params) for iz in range(nz)]
    main_infotext = infotext_with(results[0, 0, 0].infotexts[0], {**xy_params, **_params("Z", z, keep_random)})
    images: list[Image.Image] = [main]
    infotexts = [main_infotext]
    if args.flag(11):
        images += sub_grids
        infotexts += sub_infotexts
    grids = len(images)
    if args.flag(10):
        images += cells
        infotexts += [result.infotexts[0] for result in ordered]
    return combine(ordered, images, infotexts, index_of_first_image=grids, first_image_only=True)
