"""ADetailer's mask operations and per-mask prompts/seeds/steps, on tiny synthetic masks with hand-worked answers."""

import numpy as np
import pytest
from PIL import Image

from engine.detailer.masks import (
    Detections,
    MaskOptions,
    box_mask,
    dilate_erode,
    filter_by_ratio,
    keep_intersecting,
    keep_top_k,
    merge_invert,
    offset_mask,
    prepare_masks,
    sort_detections,
)
from engine.detailer.prompts import inpaint_steps, mask_prompts, prompt_segments


def columns(mask: Image.Image) -> list[int]:
    """Indices of the columns holding any nonzero pixel."""
    return np.flatnonzero(np.asarray(mask).any(axis=0)).tolist()


def rows(mask: Image.Image) -> list[int]:
    return np.flatnonzero(np.asarray(mask).any(axis=1)).tolist()


def rect_mask(size, x1, y1, x2, y2) -> Image.Image:
    """255 on columns x1..x2-1 and rows y1..y2-1."""
    mask = Image.new("L", size, 0)
    mask.paste(255, (x1, y1, x2, y2))
    return mask


def detections(size, boxes, confidences=None) -> Detections:
    confidences = confidences or [0.9] * len(boxes)
    return Detections(size, tuple(boxes), tuple(confidences), tuple(box_mask(size, box) for box in boxes))


def test_box_masks_include_both_corners_like_pil_rectangles():
    mask = np.asarray(box_mask((6, 6), (1, 2, 3, 4)))

    assert mask.sum() == 9 * 255
    assert mask[2:5, 1:4].min() == 255


def test_detections_need_one_mask_and_confidence_per_box():
    with pytest.raises(ValueError, match="one confidence"):
        Detections((4, 4), ((0, 0, 1, 1),), (), ())


def test_ratio_filter_is_inclusive_and_uses_box_area():
    found = detections((10, 10), [(0, 0, 2, 5), (0, 0, 5, 5), (0, 0, 5, 10), (0, 0, 10, 10)])  # 10%, 25%, 50%, 100%

    kept = filter_by_ratio(found, 0.25, 0.5)

    assert kept.boxes == ((0, 0, 5, 5), (0, 0, 5, 10))


def test_top_k_by_area_is_largest_first():
    found = detections((100, 100), [(0, 0, 2, 2), (0, 0, 9, 9), (0, 0, 5, 5)], [0.9, 0.5, 0.7])

    assert keep_top_k(found, 2, "Area").boxes == ((0, 0, 9, 9), (0, 0, 5, 5))
    assert keep_top_k(found, 5, "Area").boxes == ((0, 0, 9, 9), (0, 0, 5, 5), (0, 0, 2, 2))
    assert keep_top_k(found, 0, "Area") is found


def test_top_k_by_confidence_is_most_confident_first():
    found = detections((100, 100), [(0, 0, 2, 2), (0, 0, 9, 9), (0, 0, 5, 5)], [0.6, 0.5, 0.7])

    kept = keep_top_k(found, 2, "Confidence")

    assert kept.confidences == (0.7, 0.6) and kept.boxes == ((0, 0, 5, 5), (0, 0, 2, 2))
    assert np.array_equal(np.asarray(kept.masks[0]), np.asarray(box_mask((100, 100), (0, 0, 5, 5))))


@pytest.mark.parametrize(("order", "expected"), [
    ("None", [0, 1, 2]),
    ("Position (left to right)", [1, 2, 0]),
    ("Position (center to edge)", [2, 0, 1]),  # centre (50, 50); box centres at distance 40, 45, 5.7
    ("Area (large to small)", [0, 2, 1]),
])
def test_sort_orders(order, expected):
    boxes = [(80, 40, 100, 60), (0, 45, 10, 55), (40, 40, 52, 52)]  # areas 400, 100, 144

    assert sort_detections(detections((100, 100), boxes), order).boxes == tuple(boxes[i] for i in expected)


def test_unknown_names_are_errors_listing_the_valid_ones():
    found = detections((10, 10), [(0, 0, 1, 1), (0, 0, 2, 2)])
    with pytest.raises(ValueError, match="Position"):
        sort_detections(found, "Random")
    with pytest.raises(ValueError, match="Confidence"):
        keep_top_k(found, 1, "Size")
    with pytest.raises(ValueError, match="Merge and Invert"):
        merge_invert([], "Invert")


def test_offset_moves_right_and_up_and_wraps_around():
    mask = Image.new("L", (10, 10), 0)
    mask.putpixel((9, 0), 255)

    moved = np.asarray(offset_mask(mask, 1, 1))  # right off the edge and up off the top: both wrap

    assert moved[9, 0] == 255 and moved.sum() == 255
    assert np.asarray(offset_mask(mask, -2, -3))[3, 7] == 255


@pytest.mark.parametrize(("value", "expected_columns"), [
    (4, list(range(9, 22))),  # even kernel anchored at 2: grows 1 left, 2 right
    (3, list(range(9, 21))),  # odd kernel: 1 on each side
    (-4, list(range(12, 19))),  # erosion by 4: shrinks 2 left, 1 right
    (0, list(range(10, 20))),
])
def test_dilate_erode_with_cv2_rectangles(value, expected_columns):
    mask = rect_mask((40, 40), 10, 10, 20, 20)

    result = dilate_erode(mask, value)

    assert columns(result) == expected_columns and rows(result) == expected_columns


def test_merge_and_invert():
    a, b = rect_mask((8, 8), 0, 0, 2, 2), rect_mask((8, 8), 4, 4, 8, 8)

    [merged] = merge_invert([a, b], "Merge")
    [inverted] = merge_invert([a, b], "Merge and Invert")

    assert np.asarray(merged).sum() == (4 + 16) * 255
    assert np.array_equal(np.asarray(inverted), 255 - np.asarray(merged))
    assert merge_invert([a, b], "None") == [a, b]
    assert merge_invert([], "Merge") == []


def test_prepare_masks_offsets_before_dilating():
    # A one-pixel column at the right edge: offset +1 wraps it to column 0, then a 3-wide dilation grows it to
    # columns 0..1 (the left side is clipped at the border). Dilating first would give columns 18..19 → 19, 0.
    found = Detections((20, 20), ((19, 5, 19, 8),), (0.9,), (rect_mask((20, 20), 19, 5, 20, 9),))

    [mask] = prepare_masks(found, MaskOptions(x_offset=1, dilate_erode=3))

    assert columns(mask) == [0, 1]


def test_prepare_masks_drops_masks_eroded_away_and_keeps_detector_order():
    size = (40, 40)
    boxes = [(20, 20, 31, 31), (2, 2, 4, 4), (5, 5, 20, 20)]
    masks = tuple(rect_mask(size, *map(int, box)) for box in boxes)
    found = Detections(size, tuple(boxes), (0.9, 0.8, 0.7), masks)

    prepared = prepare_masks(found, MaskOptions(dilate_erode=-6))

    # Erosion by 6 (anchor 3) keeps columns a+3 .. b−2 of a mask on columns a..b; the 2×2 mask vanishes.
    assert len(prepared) == 2
    assert columns(prepared[0]) == list(range(23, 29)) and columns(prepared[1]) == list(range(8, 18))


def test_prepare_masks_filters_then_takes_top_k_then_merges():
    size = (100, 100)
    boxes = [(0, 0, 10, 10), (20, 20, 60, 60), (70, 70, 90, 90), (0, 50, 99, 99)]  # 1%, 16%, 4%, ~49%
    found = Detections(size, tuple(boxes), (0.9,) * 4, tuple(rect_mask(size, *b) for b in boxes))

    prepared = prepare_masks(found, MaskOptions(max_ratio=0.2, top_k=2, dilate_erode=0, merge_invert="Merge"))

    [merged] = prepared
    assert columns(merged) == list(range(20, 60)) + list(range(70, 90))


def test_keep_intersecting_uses_a_bitwise_and():
    user = rect_mask((10, 10), 0, 0, 5, 5)
    touching, apart = rect_mask((10, 10), 4, 4, 8, 8), rect_mask((10, 10), 6, 6, 9, 9)

    assert keep_intersecting([touching, apart], user) == [touching]


def test_prompt_segments_split_on_sep_and_fill_from_the_main_prompt():
    assert prompt_segments("", "main") == ["main"]
    assert prompt_segments("a face  [SEP] [SEP]hands", "main") == ["a face", "main", "hands"]
    assert prompt_segments("[PROMPT], detailed", "a cat") == [" a cat , detailed"]


def test_mask_prompts_seed_plus_index_and_skip():
    plan = mask_prompts(4, "first [SEP] [SKIP] [SEP] third", "", "main", "bad", seed=100, subseed=7)

    assert [(p.index, p.prompt, p.negative_prompt, p.seed, p.subseed) for p in plan] == [
        (0, "first", "bad", 100, 7),
        (2, "third", "bad", 102, 9),
        (3, "third", "bad", 103, 10),  # fewer segments than masks: the last one repeats
    ]


def test_negative_prompt_segments_are_chosen_per_mask_too():
    plan = mask_prompts(2, "", "n1 [SEP] [PROMPT] n2", "p", "neg", seed=1, subseed=1)

    assert [(p.prompt, p.negative_prompt) for p in plan] == [("p", "n1"), ("p", " neg  n2")]


@pytest.mark.parametrize(("steps", "denoise", "expected"), [
    (28, 0.4, (28, 12)),  # reference: 28 steps at 0.4 → t_enc 11 → 12 sampler steps
    (30, 0.4, (30, 13)),
    (20, 1.0, (20, 20)),  # denoise is capped at 0.999
    (20, 0.0, (20, 1)),
])
def test_inpaint_steps(steps, denoise, expected):
    assert inpaint_steps(steps, denoise) == expected
