"""Image grids with labelled rows and columns, as A1111 draws them for its scripts (X/Y/Z plot, prompt
matrix, loopback, outpainting).

Geometry reproduced from AUTOMATIC1111/stable-diffusion-webui v1.10 `modules/images.py` (`image_grid`,
`draw_grid_annotations`, `draw_prompt_matrix`; AGPL-3.0, written anew here): cells of the largest image's
size, white background, a left band of ¾ cell width when rows are labelled, a top band as tall as the tallest
column label, font size (cell width + height) / 25 shrunk until a line fits, inactive labels grey and struck
through. A1111 draws with Roboto; this uses Pillow's bundled font, so text pixels differ. Pure PIL.
"""

import math
from dataclasses import dataclass

from PIL import Image, ImageColor, ImageDraw, ImageFont


BACKGROUND = "#ffffff"  # A1111 `grid_background_color`
ACTIVE_TEXT = "#000000"  # `grid_text_active_color`
INACTIVE_TEXT = "#999999"  # `grid_text_inactive_color`


@dataclass
class GridAnnotation:
    """One line of a row or column label; inactive lines (prompt matrix) are grey and struck through."""

    text: str = ""
    is_active: bool = True
    size: tuple[int, int] = (0, 0)
    allowed_width: int = 0


def image_grid(images: list[Image.Image], rows: int | None = None) -> Image.Image:
    """A1111 `image_grid`: `rows` rows (by default, A1111's `n_rows` -1: √count rounded), cells of the largest
    image's size, smaller images centred, on white."""
    if rows is None:
        rows = round(math.sqrt(len(images)))
    rows = max(1, min(rows, len(images)))
    cols = math.ceil(len(images) / rows)
    width, height = map(max, zip(*(image.size for image in images), strict=True))
    grid = Image.new("RGB", (cols * width, rows * height), ImageColor.getcolor(BACKGROUND, "RGB"))
    for index, image in enumerate(images):
        offset_x = (width - image.width) // 2
        offset_y = (height - image.height) // 2
        grid.paste(image, (index % cols * width + offset_x, index // cols * height + offset_y))
    return grid


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(max(size, 1))


def _wrap(draw: ImageDraw.ImageDraw, text: str, typeface, line_length: int) -> list[str]:
    lines = [""]
    for word in text.split():
        line = f"{lines[-1]} {word}".strip()
        if draw.textlength(line, font=typeface) <= line_length:
            lines[-1] = line
        else:
            lines.append(word)
    return lines


def _measure(labels: list[list[GridAnnotation]], widths: list[int], typeface) -> None:
    """Wrap every label to its allowed width and record each line's size (in place, as A1111 does)."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for lines, allowed in zip(labels, widths, strict=True):
        wrapped = [GridAnnotation(part, line.is_active) for line in lines
                   for part in _wrap(draw, line.text, typeface, allowed)]
        lines[:] = wrapped
        for line in lines:
            box = draw.multiline_textbbox((0, 0), line.text, font=typeface)
            line.size, line.allowed_width = (box[2] - box[0], box[3] - box[1]), allowed


def _draw_lines(draw, x: float, y: float, lines: list[GridAnnotation], font_size: int, spacing: int) -> None:
    for line in lines:
        size = font_size
        typeface = font(size)
        while draw.multiline_textbbox((0, 0), line.text, font=typeface)[2] > line.allowed_width and size > 1:
            size -= 1
            typeface = font(size)
        colour = ACTIVE_TEXT if line.is_active else INACTIVE_TEXT
        draw.multiline_text((x, y + line.size[1] / 2), line.text, font=typeface, fill=colour, anchor="mm",
                            align="center")
        if not line.is_active:
            half_width, middle = line.size[0] // 2, y + line.size[1] // 2
            draw.line((x - half_width, middle, x + half_width, middle), fill=colour, width=4)
        y += line.size[1] + spacing


def draw_grid_annotations(
    grid: Image.Image,
    width: int,
    height: int,
    column_labels: list[list[GridAnnotation]],
    row_labels: list[list[GridAnnotation]],
    margin: int = 0,
) -> Image.Image:
    """A1111 `draw_grid_annotations`: the grid's `width` × `height` cells spaced by `margin`, column labels in
    a band on top, row labels in a band on the left (each band only when some label has text)."""
    font_size = (width + height) // 25
    spacing = font_size // 2
    typeface = font(font_size)
    has_row_text = any(line.text for lines in row_labels for line in lines)
    pad_left = width * 3 // 4 if has_row_text else 0
    cols, rows = grid.width // width, grid.height // height
    if cols != len(column_labels) or rows != len(row_labels):
        raise ValueError(f"{len(column_labels)}×{len(row_labels)} labels for a {cols}×{rows} grid")
    _measure(column_labels + row_labels, [width] * len(column_labels) + [pad_left] * len(row_labels), typeface)
    column_heights = [sum(line.size[1] + spacing for line in lines) - spacing for lines in column_labels]
    row_heights = [sum(line.size[1] + spacing for line in lines) - spacing * len(lines) for lines in row_labels]
    pad_top = 0 if sum(column_heights) == 0 else max(column_heights) + spacing * 2
    result = Image.new("RGB", (grid.width + pad_left + margin * (cols - 1),
                               grid.height + pad_top + margin * (rows - 1)), BACKGROUND)
    for row in range(rows):
        for col in range(cols):
            cell = grid.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            result.paste(cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row))
    draw = ImageDraw.Draw(result)
    for col, lines in enumerate(column_labels):
        x = pad_left + (width + margin) * col + width / 2
        _draw_lines(draw, x, pad_top / 2 - column_heights[col] / 2, lines, font_size, spacing)
    for row, lines in enumerate(row_labels):
        y = pad_top + (height + margin) * row + height / 2 - row_heights[row] / 2
        _draw_lines(draw, pad_left / 2, y, lines, font_size, spacing)
    return result


def labels(texts: list[str]) -> list[list[GridAnnotation]]:
    """One single-line label per text."""
    return [[GridAnnotation(text)] for text in texts]


def draw_prompt_matrix(grid: Image.Image, width: int, height: int, parts: list[str], margin: int = 0) -> Image.Image:
    """A1111 `draw_prompt_matrix`: the optional prompt parts split between columns (first half) and rows,
    each label listing every part, active where that column's or row's combination includes it."""
    optional = parts[1:]
    boundary = math.ceil(len(optional) / 2)
    across, down = optional[:boundary], optional[boundary:]

    def annotate(names: list[str]) -> list[list[GridAnnotation]]:
        return [[GridAnnotation(name, bool(position & (1 << i))) for i, name in enumerate(names)]
                for position in range(1 << len(names))]

    return draw_grid_annotations(grid, width, height, annotate(across), annotate(down), margin)
