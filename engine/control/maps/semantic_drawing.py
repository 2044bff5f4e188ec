"""A semantic label map drawn the way sd-webui-controlnet's OneFormer modules draw it.

`semantic_run` (`annotator/oneformer/api.py`, sd-webui-controlnet v1.1.455) calls OneFormer's Visualizer
(`annotator/oneformer/oneformer/demo/visualizer.py`, after detectron2's; Apache-2.0) as
`Visualizer(img, is_img=False).draw_sem_seg(labels, alpha=1, is_text=False)`. It is not a plain palette lookup:

- the canvas starts white, not the image (`is_img=False`), and every class is painted opaque (alpha 1);
- classes are painted from the largest area to the smallest, so smaller regions lie on top;
- a class whose mask has no hole becomes matplotlib polygons (OpenCV contours through pixel centres, those of
  fewer than 3 points dropped) filled with its colour and outlined in white (sd-webui-controlnet's `_OFF_WHITE`
  is pure white), 1 pt wide below about 2700 px of image diagonal, anti-aliased: borders show thin white lines;
- a class whose mask has a hole is painted pixel for pixel as an image, without an outline.

matplotlib does the drawing here too (Agg, no pyplot), so edges and anti-aliasing come out as in the extension.
"""

import cv2
import numpy as np


WHITE = (1.0, 1.0, 1.0)  # sd-webui-controlnet's `_OFF_WHITE`


def _polygons(mask: np.ndarray) -> tuple[list[np.ndarray], bool]:
    """`GenericMask.mask_to_polygons`: outer and inner contours (RETR_CCOMP), whether any is a hole; points
    moved by half a pixel to pixel centres, contours of fewer than 3 points dropped."""
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)[-2:]
    if hierarchy is None:
        return [], False
    has_holes = bool((hierarchy.reshape(-1, 4)[:, 3] >= 0).any())
    return [c.reshape(-1, 2) + 0.5 for c in contours if c.size >= 6], has_holes


def draw_semantic(labels: np.ndarray, palette) -> np.ndarray:
    """The HWC uint8 RGB drawing of an HW label map; `palette[label]` is the label's RGB colour (0–255)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Polygon

    height, width = labels.shape
    figure = Figure(frameon=False)
    dpi = figure.get_dpi()
    # `VisImage._setup_figure`: +1e-2 so that matplotlib's truncation keeps the exact pixel size.
    figure.set_size_inches((width + 1e-2) / dpi, (height + 1e-2) / dpi)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_axes([0.0, 0.0, 1.0, 1.0])
    axes.axis("off")
    axes.imshow(np.full((height, width, 3), 255, np.uint8), extent=(0, width, height, 0), interpolation="nearest")
    # `Visualizer.__init__`: the default font size, of which the outline width is a fifteenth (at least 1 pt).
    font_size = max(np.sqrt(height * width) // 90, 10)
    line_width = max(font_size // 15, 1)

    found, areas = np.unique(labels, return_counts=True)
    for label in found[np.argsort(-areas)]:
        if label >= len(palette):
            continue
        colour = tuple(channel / 255 for channel in palette[label])
        mask = (labels == label).astype(np.uint8)
        polygons, has_holes = _polygons(mask)
        if has_holes:
            rgba = np.zeros((height, width, 4), np.float32)
            rgba[:, :, :3] = colour
            rgba[:, :, 3] = mask
            axes.imshow(rgba, extent=(0, width, height, 0))
            continue
        for polygon in polygons:
            axes.add_patch(Polygon(polygon, fill=True, facecolor=(*colour, 1.0), edgecolor=(*WHITE, 1.0),
                                   linewidth=line_width))
    buffer, (out_width, out_height) = canvas.print_to_buffer()
    return np.frombuffer(buffer, np.uint8).reshape(out_height, out_width, 4)[:, :, :3].copy()
