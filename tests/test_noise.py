"""A1111's per-image noise (`modules/rng.py`): seeds, variation seeds, seed resize, ENSD, RNG source."""

import pytest
import torch

from engine.errors import UnsupportedError
from engine.sampling.noise import GeneratorNoise, ImageNoise, generator_device


SHAPE = (4, 6, 10)


def plain(seed, shape=SHAPE):
    """What A1111 draws for a seed: randn from a fresh CPU generator, float32."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def a1111_slerp(val, low, high):
    """Reference: A1111 `rng.slerp` applied to (C, H, W) tensors, norms along dim 1."""
    low_norm = low / low.norm(dim=1, keepdim=True)
    high_norm = high / high.norm(dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    return (torch.sin((1 - val) * omega) / torch.sin(omega)).unsqueeze(1) * low + (
        torch.sin(val * omega) / torch.sin(omega)
    ).unsqueeze(1) * high


def test_each_image_uses_its_own_seed_and_batches_match_single_images():
    batch = ImageNoise(SHAPE, [11, 12]).first()
    assert batch.shape == (2, *SHAPE) and batch.dtype == torch.float32
    assert torch.equal(batch[0], plain(11))
    assert torch.equal(batch[1], plain(12))
    assert torch.equal(ImageNoise(SHAPE, [12]).first()[0], batch[1])


def test_same_seed_same_noise_every_time():
    first = ImageNoise(SHAPE, [5, 6], subseeds=[9, 10], subseed_strength=0.3).first()
    again = ImageNoise(SHAPE, [5, 6], subseeds=[9, 10], subseed_strength=0.3).first()
    assert torch.equal(first, again)


def test_later_noise_continues_each_images_generator():
    noise = ImageNoise(SHAPE, [3, 4])
    noise.first()
    drawn = GeneratorNoise(noise.generators)(torch.zeros(2, *SHAPE))
    for index, seed in enumerate([3, 4]):
        generator = torch.Generator().manual_seed(seed)
        torch.randn(SHAPE, generator=generator)
        assert torch.equal(drawn[index], torch.randn(SHAPE, generator=generator))


def test_ensd_reseeds_the_sampler_generators_after_the_first_draw():
    noise = ImageNoise(SHAPE, [3, 4], ensd=31337)
    first = noise.first()
    assert torch.equal(first[0], plain(3))
    later = noise.next()
    assert torch.equal(later[0], plain(3 + 31337))
    assert torch.equal(later[1], plain(4 + 31337))


@pytest.mark.parametrize("strength", [0.0, 0.25, 0.9])
def test_variation_seed_is_a1111s_slerp_along_dim_1(strength):
    noise = ImageNoise(SHAPE, [21, 22], subseeds=[31], subseed_strength=strength).first()
    # Missing subseeds count as 0 (A1111).
    for index, subseed in enumerate([31, 0]):
        expected = (
            plain(21 + index) if strength == 0 else a1111_slerp(strength, plain(21 + index), plain(subseed))
        )
        assert torch.allclose(noise[index], expected, atol=1e-6)
    if strength:
        # Not a per-tensor slerp: the angle differs per (channel, column), which is A1111's quirk.
        low, high = plain(21), plain(31)
        flat = (low.flatten() / low.norm() * high.flatten() / high.norm()).sum()
        omega = torch.acos(flat)
        whole = (torch.sin((1 - strength) * omega) * low + torch.sin(strength * omega) * high) / torch.sin(
            omega
        )
        assert not torch.allclose(noise[0], whole, atol=1e-3)


def test_full_variation_strength_gives_the_subseed_noise():
    noise = ImageNoise(SHAPE, [21], subseeds=[31], subseed_strength=1.0).first()
    assert torch.allclose(noise[0], plain(31), atol=1e-5)


def test_seed_resize_pastes_the_old_size_noise_centred():
    # Latent 6x10 now, found at 32x32 px = 4x4 latent: pasted at rows 1..5, columns 3..7.
    noise = ImageNoise(SHAPE, [8], seed_resize_from=(32, 32)).first()[0]
    generator = torch.Generator().manual_seed(8)
    background = torch.randn(SHAPE, generator=generator)
    small = plain(8, (4, 4, 4))
    assert torch.equal(noise[:, 1:5, 3:7], small)
    mask = torch.ones(SHAPE, dtype=torch.bool)
    mask[:, 1:5, 3:7] = False
    assert torch.equal(noise[mask], background[mask])


def test_seed_resize_from_a_larger_size_crops_the_centre():
    noise = ImageNoise((4, 4, 4), [8], seed_resize_from=(64, 48)).first()[0]
    big = plain(8, (4, 6, 8))
    assert torch.equal(noise, big[:, 1:5, 2:6])


def test_seed_resize_keeps_the_generator_position():
    resized = ImageNoise(SHAPE, [8], seed_resize_from=(32, 32))
    resized.first()
    plain_noise = ImageNoise(SHAPE, [8])
    plain_noise.first()
    assert torch.equal(resized.next(), plain_noise.next())


def test_variation_and_resize_together():
    noise = ImageNoise(SHAPE, [8], subseeds=[9], subseed_strength=0.5, seed_resize_from=(32, 32)).first()[0]
    expected = a1111_slerp(0.5, plain(8, (4, 4, 4)), plain(9, (4, 4, 4)))
    assert torch.allclose(noise[:, 1:5, 3:7], expected, atol=1e-6)


def test_rng_source_devices():
    assert generator_device("cpu", "GPU") == torch.device("cpu")
    assert generator_device("cpu", "CPU") == torch.device("cpu")
    assert generator_device("cuda:0", "CPU") == torch.device("cpu")
    assert generator_device("cuda:0", "GPU") == torch.device("cuda:0")
    with pytest.raises(UnsupportedError) as caught:
        ImageNoise(SHAPE, [1], source="NV")
    assert caught.value.field == "randn_source"


def test_noise_never_touches_the_global_rng():
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    noise = ImageNoise(SHAPE, [1, 2], subseeds=[3, 4], subseed_strength=0.5, seed_resize_from=(32, 32))
    noise.first()
    noise.next()
    assert torch.equal(torch.rand(3), expected)


def test_seeds_past_64_bits_are_refused_by_field():
    """torch seeds a generator with at most an unsigned 64-bit value and image i uses seed + i: a larger seed is
    a clear error, not an overflow deep in the sampler (found by tests/test_fuzz.py)."""
    from engine.errors import RequestError
    from engine.settings import Settings
    from engine.translate import to_plan
    from engine.wire.txt2img import Txt2ImgRequest

    def plan(**fields):
        return to_plan(Txt2ImgRequest.parse({"width": 64, "height": 64, **fields}), Settings())

    assert plan(seed=2**64 - 1).noise.seeds == (2**64 - 1,)
    with pytest.raises(RequestError, match=r"^seed: must be at most 18446744073709551614 for 2 image\(s\)"):
        plan(seed=2**64 - 1, batch_size=2)
    with pytest.raises(RequestError, match=r"^subseed: must be at most"):
        plan(subseed=2**70)
