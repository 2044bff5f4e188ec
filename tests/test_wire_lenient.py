"""The request models accept what A1111's pydantic-1 models accept: floats for ints (truncated), numbers for
strings, strings for numbers and booleans; what neither accepts is a one-line error on the field."""

import pytest

from engine.errors import RequestError
from engine.samplers import resolve_sampler
from engine.wire.img2img import Img2ImgRequest
from engine.wire.txt2img import Txt2ImgRequest


@pytest.mark.parametrize(
    ("field", "sent", "parsed"),
    [
        ("width", 512.0, 512),
        ("width", "512", 512),
        ("hr_second_pass_steps", 15.0, 15),
        ("steps", 20.7, 20),  # pydantic 1 `int(20.7)`: truncated
        ("seed", "1234", 1234),
        ("cfg_scale", "7.5", 7.5),
        ("denoising_strength", "0.4", 0.4),
        ("enable_hr", "true", True),
        ("restore_faces", 0, False),
        ("sampler_index", 0, "0"),  # pydantic 1 stringifies numbers
        ("prompt", 42, "42"),
        ("prompt", ["a cat", 7], ["a cat", "7"]),
        ("styles", ["one", 2], ["one", "2"]),
        ("hr_scale", 2, 2.0),
    ],
)
def test_coerces_like_a1111s_pydantic_1_models(field, sent, parsed):
    assert getattr(Txt2ImgRequest.parse({field: sent}), field) == parsed


def test_img2img_fields_are_lenient_too():
    request = Img2ImgRequest.parse({"mask_blur": 4.0, "inpainting_fill": "1", "resize_mode": 2.0})
    assert (request.mask_blur, request.inpainting_fill, request.resize_mode) == (4, 1, 2)


@pytest.mark.parametrize(
    ("field", "sent"),
    [("steps", "many"), ("width", "51.5"), ("styles", "a style"), ("enable_hr", "maybe"), ("prompt", {"a": 1})],
)
def test_what_pydantic_1_refuses_is_a_field_error(field, sent):
    with pytest.raises(RequestError) as error:
        Txt2ImgRequest.parse({field: sent})
    assert error.value.field == field


def test_unknown_fields_are_kept_to_be_reported():
    request = Txt2ImgRequest.parse({"prompt": "x", "clip_skip": 2})
    assert request.ignored_fields() == ["clip_skip"]


@pytest.mark.parametrize(
    ("sampler", "scheduler", "expected"),
    [
        ("k_euler_a", None, ("Euler a", "Automatic")),
        ("k_dpmpp_2m", "Karras", ("DPM++ 2M", "Karras")),
        ("DPM++ 2M Karras", None, ("DPM++ 2M", "Karras")),
        ("euler", "karras", ("Euler", "Karras")),
        ("DPM++ SDE", "Automatic", ("DPM++ SDE", "Karras")),
    ],
)
def test_sampler_aliases_and_capitalised_schedules_resolve(sampler, scheduler, expected):
    choice = resolve_sampler(sampler, scheduler)
    assert (choice.sampler, choice.schedule) == expected
