"""The pure parts of A1111's selectable scripts: X/Y/Z axis tables and value syntax, grid geometry, the
outpainting geometry and matched noise, loopback's strength curve, prompt matrix and prompt-file lines."""

import numpy as np
import pytest
from PIL import Image

from engine.errors import RequestError, UnsupportedError
from engine.imaging.grid import GridAnnotation, draw_grid_annotations, draw_prompt_matrix, image_grid, labels
from engine.imaging.matched_noise import matched_noise
from engine.scripts.axes import axis_values, find_axis, fix_seeds, prompt_search_replace, tab_axes
from engine.scripts.loopback import strength_at
from engine.scripts.outpainting import grown_sides
from engine.scripts.prompt_matrix import matrix_prompts
from engine.scripts.prompts_from_file import line_jobs, parse_line_options
from engine.wire.txt2img import Txt2ImgRequest


# --- X/Y/Z axes ---------------------------------------------------------------------------------------------

# Indices clients send (A1111 v1.10's lists, txt2img and img2img tabs).
TXT2IMG_INDICES = {0: "Nothing", 1: "Seed", 4: "Steps", 5: "Hires steps", 6: "CFG Scale", 7: "Prompt S/R",
                   9: "Sampler", 11: "Checkpoint name", 17: "Schedule type", 25: "Denoising", 28: "Hires upscaler",
                   29: "VAE", 41: "Size"}
IMG2IMG_INDICES = {5: "CFG Scale", 6: "Image CFG Scale", 7: "Prompt S/R", 9: "Sampler", 10: "Checkpoint name",
                   24: "Denoising", 27: "Cond. Image Mask Weight"}


def test_axis_indices_follow_a1111s_lists():
    txt2img, img2img = tab_axes(False), tab_axes(True)
    assert {i: txt2img[i].label for i in TXT2IMG_INDICES} == TXT2IMG_INDICES
    assert {i: img2img[i].label for i in IMG2IMG_INDICES} == IMG2IMG_INDICES
    assert len(txt2img) == 42 and len(img2img) == 41


def test_axes_by_index_or_label():
    assert find_axis(7, False, "x").label == "Prompt S/R"
    assert find_axis("7", False, "x").label == "Prompt S/R"
    assert find_axis("cfg scale", True, "x").label == "CFG Scale"
    with pytest.raises(RequestError, match="0 Nothing, 1 Seed"):
        find_axis(99, False, "script_args[0]")


@pytest.mark.parametrize(
    ("label", "text", "values"),
    [
        ("Steps", "1-5", [1, 2, 3, 4, 5]),
        ("Steps", "1-10 (+3)", [1, 4, 7, 10]),
        ("Steps", "10-1 (-3)", [10, 7, 4]),  # A1111 stops one short going down: range(10, 1 + 1, -3)
        ("Steps", "1-10 [4]", [1, 4, 7, 10]),
        ("Steps", "5, 8-9, 20", [5, 8, 9, 20]),
        ("Seed", "-1, 3", [-1, 3]),
        ("CFG Scale", "5-7 (+0.5)", [5.0, 5.5, 6.0, 6.5, 7.0]),
        ("CFG Scale", "0-1 [3]", [0.0, 0.5, 1.0]),
        ("CFG Scale", "4.5, 7", [4.5, 7.0]),
        ("Prompt S/R", 'fox, "cat, black", dog', ["fox", "cat, black", "dog"]),
        ("Nothing", "whatever", [0]),
    ],
)
def test_value_syntax(label, text, values):
    axis = find_axis(label, False, "x")
    assert axis_values(axis, text, None, "x") == pytest.approx(values)


def test_dropdown_values_take_precedence_and_permutations():
    sampler = find_axis("Sampler", False, "x")
    assert axis_values(sampler, "ignored", ["Euler", "DPM++ 2M"], "x") == ["Euler", "DPM++ 2M"]
    order = find_axis("Prompt order", False, "x")
    assert axis_values(order, "a, b", None, "x") == [("a", "b"), ("b", "a")]


def test_bad_values_and_refused_axes():
    with pytest.raises(RequestError, match="Steps values"):
        axis_values(find_axis("Steps", False, "x"), "many", None, "x")
    with pytest.raises(UnsupportedError, match="token merging"):
        find_axis("Token merging ratio", False, "x").apply(None, 0.5, [0.5])


def test_seed_axes_fix_minus_one_once():
    seeds = fix_seeds(find_axis("Seed", False, "x"), [-1, 5])
    assert seeds[1] == 5 and 0 <= seeds[0] < 4294967294


def test_prompt_search_replace():
    request = Txt2ImgRequest.parse({"prompt": "a red fox", "negative_prompt": "red eyes"})
    assert prompt_search_replace(request, "blue", ["red", "blue"]) == {
        "prompt": "a blue fox", "negative_prompt": "blue eyes"}
    with pytest.raises(RequestError, match="Prompt S/R did not find green"):
        prompt_search_replace(request, "x", ["green", "x"])


# --- grids --------------------------------------------------------------------------------------------------


def cells(count: int, size=(40, 30)) -> list[Image.Image]:
    return [Image.new("RGB", size, (i * 20, 0, 0)) for i in range(count)]


def test_image_grid_geometry():
    assert image_grid(cells(6), rows=2).size == (120, 60)
    assert image_grid(cells(5)).size == (120, 60)  # √5 rounds to 2 rows
    mixed = image_grid([Image.new("RGB", (20, 10), "red"), Image.new("RGB", (40, 30), "blue")], rows=1)
    assert mixed.size == (80, 30) and mixed.getpixel((0, 0)) == (255, 255, 255)  # centred on white
    assert mixed.getpixel((10, 15)) == (255, 0, 0)


def test_annotations_add_bands_only_for_text():
    grid = image_grid(cells(4), rows=2)
    plain = draw_grid_annotations(grid, 40, 30, labels(["", ""]), labels(["", ""]))
    assert plain.size == grid.size
    labelled = draw_grid_annotations(grid, 40, 30, labels(["Steps: 1", "Steps: 2"]), labels(["A", "B"]), margin=4)
    pad_left = 40 * 3 // 4
    assert labelled.width == 80 + pad_left + 4 and labelled.height > 60 + 4
    # The cells are pasted whole below the top band, right of the left band (bottom row: cells 2 and 3).
    assert labelled.getpixel((pad_left + 1, labelled.height - 1)) == (40, 0, 0)
    assert labelled.getpixel((labelled.width - 1, labelled.height - 1)) == (60, 0, 0)


def test_prompt_matrix_labels_need_a_column_and_row_per_combination():
    grid = image_grid(cells(4), rows=2)
    drawn = draw_prompt_matrix(grid, 40, 30, ["base", "one", "two"])
    assert drawn.width > 80 and drawn.height > 60
    with pytest.raises(ValueError, match="labels for a"):
        draw_grid_annotations(grid, 40, 30, labels(["a"]), [[GridAnnotation()]])


# --- other scripts ------------------------------------------------------------------------------------------


def test_prompt_matrix_combinations():
    parts, prompts = matrix_prompts("a fox|snow|night", False, ", ")
    assert parts == ["a fox", "snow", "night"]
    assert prompts == ["a fox", "a fox, snow", "a fox, night", "a fox, snow, night"]
    assert matrix_prompts("a fox| snow,", True, " ")[1] == ["a fox", "snow a fox"]


def test_prompt_file_lines():
    assert parse_line_options('--prompt a tall tree --steps 3 --negative_prompt "dark" sky --cfg_scale 4') == {
        "prompt": "a tall tree", "steps": 3, "negative_prompt": "dark sky", "cfg_scale": 4.0}
    jobs, warnings = line_jobs("a cat\n\n--seed 5 --prompt dog\n--unknown 1\n")
    assert jobs == [{"prompt": "a cat"}, {"seed": 5, "prompt": "dog"}, {"prompt": "--unknown 1"}]
    assert len(warnings) == 1 and "--unknown 1" in warnings[0]


@pytest.mark.parametrize(
    ("curve", "strengths"),
    [("Linear", [0.8, 0.65, 0.5]), ("Aggressive", [0.8, 0.5879, 0.5]), ("Lazy", [0.8, 0.7121, 0.5])],
)
def test_loopback_strength_curves(curve, strengths):
    assert [strength_at(i, 3, 0.8, 0.5, curve) for i in range(3)] == pytest.approx(strengths, abs=1e-4)


def test_outpainting_grows_to_multiples_of_64_sharing_opposite_sides():
    # 100 + 64 → 192: the 92 new columns split between left and right.
    assert grown_sides(100, 64, 32, ["left", "right"]) == {"left": 46, "right": 46, "up": 0, "down": 0}
    assert grown_sides(64, 64, 128, ["up"]) == {"left": 0, "right": 0, "up": 128, "down": 0}
    assert grown_sides(64, 64, 8, ["down", "left"]) == {"left": 64, "right": 0, "up": 0, "down": 64}


def test_matched_noise_keeps_the_picture_and_matches_its_colours():
    rng = np.random.default_rng(3)
    image = np.clip(rng.normal([0.7, 0.4, 0.2], 0.1, (48, 64, 3)), 0, 1)
    mask = np.zeros_like(image)
    mask[:, :16] = 1.0
    filled = matched_noise(image, mask)
    assert np.array_equal(filled[:, 16:], image[:, 16:])
    # The fill takes the visible area's per-channel distribution (histogram matching).
    assert filled[:, :16].mean(axis=(0, 1)) == pytest.approx(image[:, 16:].mean(axis=(0, 1)), abs=0.02)
    assert np.array_equal(matched_noise(image, mask), filled)  # seeded: the fill depends on the image only
    flat = matched_noise(np.full((32, 32, 3), 0.5), mask[:32, :32])
    assert np.isfinite(flat).all()


def test_costly_axes_change_in_the_outer_loop():
    from engine.scripts.xyz_plot import AxisChoice, _loop_order

    steps = AxisChoice(find_axis("Steps", False, "x"), [1, 2], "")
    checkpoint = AxisChoice(find_axis("Checkpoint name", False, "x"), ["a", "b"], "")
    nothing = AxisChoice(find_axis("Nothing", False, "x"), [0], "")
    # A1111's default order runs X fastest; with checkpoints on X they change once, Y runs fastest.
    assert _loop_order(steps, checkpoint, nothing) == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]
    assert _loop_order(checkpoint, steps, nothing) == [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]
