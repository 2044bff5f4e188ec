"""A1111 "inpaint only masked" geometry against worked examples computed by hand."""

import numpy as np
import pytest
from PIL import Image

from engine.imaging.inpaint import (
    blur_kernel_size,
    blur_mask,
    create_binary_mask,
    expand_crop_region,
    get_crop_region,
    latent_mask,
    make_overlay,
    prepare_inpaint,
    resize_image,
)


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def rect_mask(size, x1, y1, x2, y2) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (x1, y1, x2, y2))
    return mask


def random_image(width, height, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(("sigma", "kernel"), [(1, 7), (2, 11), (4, 21), (8, 41)])
def test_blur_kernel_size_formula(sigma, kernel):
    assert blur_kernel_size(sigma) == kernel  # 2·int(2.5σ + 0.5) + 1


def test_blur_of_an_impulse_is_the_normalised_gaussian():
    # σ = 1, k = 7: weights e^(−i²/2) for i = 0..3 are 1, 0.6065, 0.1353, 0.0111, sum over −3..3 = 2.5059;
    # 255 × weight / sum = 101.8, 61.7, 13.8, 1.1 → rounded 102, 62, 14, 1.
    row = Image.new("L", (15, 1), 0)
    row.putpixel((7, 0), 255)

    assert np.asarray(blur_mask(row, 1, 0))[0].tolist() == [0, 0, 0, 0, 1, 14, 62, 102, 62, 14, 1, 0, 0, 0, 0]


def test_blur_is_separable_x_then_y():
    mask = rect_mask((15, 15), 7, 7, 8, 8)

    only_x, only_y = np.asarray(blur_mask(mask, 1, 0)), np.asarray(blur_mask(mask, 0, 1))

    assert only_x[7].tolist() == only_y[:, 7].tolist() and only_x.sum(axis=0)[7] == 102
    assert rows(only_x) == [7] and columns(only_y) == [7]


def rows(array) -> list[int]:
    return np.flatnonzero(np.asarray(array).any(axis=1)).tolist()


def columns(array) -> list[int]:
    return np.flatnonzero(np.asarray(array).any(axis=0)).tolist()


def test_blur_halo_reaches_half_the_kernel():
    # σ 4, k 21: a pixel 10 away from a long edge gets 255·e^(−100/32)/10.03 ≈ 1.1 → 1; 11 away is outside the kernel.
    blurred = blur_mask(rect_mask((100, 80), 40, 30, 50, 40), 4)

    assert blurred.getbbox() == (30, 20, 60, 50)


def test_binary_mask_from_alpha_thresholds_above_128():
    rgba = Image.new("RGBA", (3, 1), (255, 255, 255, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    rgba.putpixel((2, 0), (0, 0, 0, 129))

    assert np.asarray(create_binary_mask(rgba))[0].tolist() == [0, 0, 255]
    assert np.asarray(create_binary_mask(rgba, round_alpha=False))[0].tolist() == [0, 128, 129]
    assert np.asarray(create_binary_mask(Image.new("RGBA", (2, 1), (255, 255, 255, 255))))[0].tolist() == [255, 255]


def test_crop_region_pads_and_clamps():
    mask = rect_mask((100, 80), 5, 30, 20, 70)  # bbox (5, 30, 20, 70)

    assert get_crop_region(mask, 0) == (5, 30, 20, 70)
    assert get_crop_region(mask, 8) == (0, 22, 28, 78)
    assert get_crop_region(mask, 50) == (0, 0, 70, 80)
    assert get_crop_region(Image.new("L", (8, 8)), 4) is None


@pytest.mark.parametrize(("region", "processing", "image", "expected"), [
    # 32×16 at 1:1 → height 32: 16 more rows, 8 above and 8 below.
    ((10, 20, 42, 36), (64, 64), (100, 100), (10, 12, 42, 44)),
    # 40×10 at the top at 1:1: 30 more rows → y −15..25 → shifted down to 0..40.
    ((0, 0, 40, 10), (512, 512), (100, 50), (0, 0, 40, 40)),
    # at the bottom: y 25..65 → shifted up by 15 to 10..50.
    ((60, 40, 100, 50), (512, 512), (100, 50), (60, 10, 100, 50)),
    # wider than the image can be tall: y −25..75 → up 25 → −50..50 → down 50 → 0..100 → clamped to 50.
    ((0, 20, 100, 30), (64, 64), (100, 50), (0, 0, 100, 50)),
    # 10×30 at 2:1 → width 60: x −15..45 → shifted right to 0..60.
    ((10, 10, 20, 40), (512, 256), (100, 100), (0, 10, 60, 40)),
    # odd growth: 11×10 → 11 wide at 1:1 → 1 more row, which goes to the bottom.
    ((10, 10, 21, 20), (64, 64), (100, 100), (10, 10, 21, 21)),
])
def test_expand_crop_region(region, processing, image, expected):
    assert expand_crop_region(region, *processing, *image) == expected


def three_bands(width, height) -> Image.Image:
    """Left quarter red, middle half green, right quarter blue."""
    image = Image.new("RGB", (width, height), GREEN)
    image.paste(RED, (0, 0, width // 4, height))
    image.paste(BLUE, (width * 3 // 4, 0, width, height))
    return image


def test_resize_mode_0_stretches():
    assert resize_image(0, three_bands(100, 50), 30, 70).size == (30, 70)


def test_resize_mode_1_crops_the_centre():
    # 100×50 → 50×50: scaled to cover (stays 100×50), pasted at x = 25 − 50 = −25: only the green half shows.
    result = np.asarray(resize_image(1, three_bands(100, 50), 50, 50))

    assert result.shape == (50, 50, 3) and (result == GREEN).all()


def test_resize_mode_2_fits_and_stretches_the_edges_into_the_bars():
    # 100×50 top red / bottom blue → 50×50: scaled to 50×25 and pasted at y = 25 − 12 = 13; the 13-row bars
    # above and below repeat the first (red) and last (blue) rows.
    image = Image.new("RGB", (100, 50), RED)
    image.paste(BLUE, (0, 25, 100, 50))

    result = np.asarray(resize_image(2, image, 50, 50))

    assert (result[:13] == RED).all() and (result[38:] == BLUE).all()
    assert (result[13:18] == RED).all() and (result[33:38] == BLUE).all()


def test_resize_modes_keep_masks_single_channel():
    for mode in (0, 1, 2):
        assert resize_image(mode, rect_mask((40, 20), 0, 0, 10, 10), 16, 16).mode == "L"
    with pytest.raises(ValueError, match="resize mode"):
        resize_image(3, rect_mask((4, 4), 0, 0, 1, 1), 8, 8)


def test_overlay_alpha_is_the_inverted_mask():
    mask = Image.fromarray(np.array([[0, 64, 255]], dtype=np.uint8))

    overlay = np.asarray(make_overlay(Image.new("RGB", (3, 1), (10, 20, 30)), mask))

    assert overlay[0, :, 3].tolist() == [255, 191, 0]
    assert overlay[0, 0, :3].tolist() == [10, 20, 30]


def test_only_masked_crop_for_a_worked_example():
    # Mask x 40..49, y 30..39; blur σ 4 → bbox (30, 20, 60, 50); padding 8 → (22, 12, 68, 58), 46×46;
    # at 64×32 (2:1) the width must be 92: 46 more columns, 23 each side → x −1..91 → shifted to 0..92.
    region = prepare_inpaint(random_image(100, 80), rect_mask((100, 80), 40, 30, 50, 40), 64, 32,
                             mask_blur=4, padding=8)

    assert region.crop == (0, 12, 92, 58) and region.paste_to == (0, 12, 92, 46)
    assert region.init_image.size == (64, 32) and region.init_image.mode == "RGB"
    assert region.mask.size == (64, 32) and region.mask.mode == "L"
    assert region.overlay.size == (100, 80) and region.overlay.mode == "RGBA"


def test_init_image_is_the_crop_resized_with_fill():
    image = random_image(100, 80)
    region = prepare_inpaint(image, rect_mask((100, 80), 40, 30, 50, 40), 64, 32, mask_blur=4, padding=8)

    assert np.array_equal(np.asarray(region.init_image), np.asarray(resize_image(2, image.crop(region.crop), 64, 32)))


def test_paste_back_without_blur_is_exact():
    # Gray 100 original, mask x 20..39 / y 10..29, no blur, no padding: the crop is the 20×20 mask box and a
    # flat 200 result comes back inside it, the original everywhere else.
    original = Image.new("RGB", (64, 48), (100, 100, 100))
    region = prepare_inpaint(original, rect_mask((64, 48), 20, 10, 40, 30), 32, 32, mask_blur=0, padding=0)

    pasted = np.asarray(region.paste_back(Image.new("RGB", (32, 32), (200, 200, 200))))

    assert region.paste_to == (20, 10, 20, 20)
    assert pasted.shape == (48, 64, 3)
    assert (pasted[10:30, 20:40] == 200).all()
    outside = np.ones((48, 64), bool)
    outside[10:30, 20:40] = False
    assert (pasted[outside] == 100).all()


def test_paste_back_blends_by_the_blurred_mask():
    # Result 200 over original 100: a pixel of blurred-mask value m becomes (200·m + 100·(255 − m)) / 255.
    original = Image.new("RGB", (64, 64), (100, 100, 100))
    mask = rect_mask((64, 64), 24, 24, 40, 40)
    region = prepare_inpaint(original, mask, 64, 64, mask_blur=4, padding=0)

    pasted = np.asarray(region.paste_back(Image.new("RGB", (64, 64), (200, 200, 200))), dtype=np.float64)

    m = np.asarray(blur_mask(mask, 4), dtype=np.float64)
    assert np.abs(pasted[..., 0] - (200 * m + 100 * (255 - m)) / 255).max() <= 1


def test_pixels_outside_the_blurred_mask_come_back_unchanged():
    original = random_image(120, 90, seed=1)
    mask = rect_mask((120, 90), 70, 20, 95, 50)
    region = prepare_inpaint(original, mask, 48, 64, mask_blur=4, padding=16)

    pasted = region.paste_back(random_image(48, 64, seed=2))

    untouched = np.asarray(blur_mask(mask, 4)) == 0
    assert pasted.size == original.size
    assert np.array_equal(np.asarray(pasted)[untouched], np.asarray(original)[untouched])
    assert not np.array_equal(np.asarray(pasted), np.asarray(original))


def test_latent_mask_of_a_half_mask():
    # 64×64 mask, left half painted → 8×8 latent: bicubic leaves columns 0..3 above one half, 4..7 below.
    latent = latent_mask(rect_mask((64, 64), 0, 0, 32, 64), 8, 8)

    assert latent.shape == (8, 8) and latent.dtype == np.float32
    assert latent[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0] and (latent == latent[0]).all()


def test_latent_mask_unrounded_keeps_soft_edges():
    soft = latent_mask(blur_mask(rect_mask((64, 64), 0, 0, 32, 64), 8), 8, 8, round_mask=False)

    assert 0.5 < soft[0, 3] < 1 and 0 < soft[0, 4] < 0.5


def test_whole_picture_inpaint_works_at_processing_size_with_a_harder_overlay_edge():
    original = random_image(80, 60)
    mask = rect_mask((80, 60), 20, 20, 40, 40)
    region = prepare_inpaint(original, mask, 40, 30, mask_blur=4, only_masked=False)

    assert region.crop is None and region.paste_to is None
    assert region.init_image.size == region.mask.size == region.overlay.size == (40, 30)
    doubled = np.clip(np.asarray(region.mask, dtype=np.int32) * 2, 0, 255)
    assert np.array_equal(np.asarray(region.overlay)[..., 3], 255 - doubled)
    assert region.paste_back(random_image(40, 30, seed=3)).size == (40, 30)


def test_an_empty_or_mis_sized_mask_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        prepare_inpaint(random_image(16, 16), Image.new("L", (16, 16)), 8, 8)
    with pytest.raises(ValueError, match="16×8"):
        prepare_inpaint(random_image(16, 16), rect_mask((16, 8), 0, 0, 4, 4), 8, 8)
