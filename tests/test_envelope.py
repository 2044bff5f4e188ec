"""RunPod job input → A1111 call, for both forms clients send, and the errors for bad input."""


import pytest

from engine.errors import RequestError
from engine.wire.envelope import parse_job_input
from engine.wire.routes import route
from tests.seeds import seed_job


@pytest.mark.parametrize("name", ["000_343685f6abe1ed79.txt", "002_645e89f4f859427c.txt"])
def test_seed_envelopes_are_txt2img_calls(name):
    call = parse_job_input(seed_job(name)["input"])
    assert (call.method, call.endpoint) == ("POST", "sdapi/v1/txt2img")
    assert "prompt" in call.payload
    assert route(call.method, call.endpoint) == "txt2img"


def test_endpoint_without_leading_slash_and_bare_payload():
    assert parse_job_input(
        {"api": {"method": "post", "endpoint": "sdapi/v1/txt2img"}, "payload": {}}
    ).endpoint == ("sdapi/v1/txt2img")
    bare = parse_job_input({"prompt": "a cat", "steps": 4})
    assert (bare.method, bare.endpoint, bare.payload["prompt"]) == ("POST", "sdapi/v1/txt2img", "a cat")


def test_get_without_payload_is_accepted():
    call = parse_job_input({"api": {"method": "GET", "endpoint": "/sdapi/v1/sd-models"}})
    assert call.payload == {}


@pytest.mark.parametrize(
    ("job_input", "field"),
    [
        ("not an object", "input"),
        (["a"], "input"),
        ({"payload": {}}, "input.api"),
        ({"api": "txt2img", "payload": {}}, "input.api"),
        ({"api": {"method": "PUT", "endpoint": "/sdapi/v1/txt2img"}, "payload": {}}, "input.api.method"),
        ({"api": {"method": "POST"}, "payload": {}}, "input.api.endpoint"),
        ({"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"}}, "input.payload"),
        ({"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"}, "payload": [1]}, "input.payload"),
    ],
)
def test_bad_envelopes_name_the_field(job_input, field):
    with pytest.raises(RequestError) as caught:
        parse_job_input(job_input)
    assert caught.value.field == field
    assert "\n" not in str(caught.value)


def test_unknown_endpoint_lists_supported_ones_and_wrong_method_says_which():
    with pytest.raises(RequestError, match="supported: .*POST /sdapi/v1/txt2img"):
        route("POST", "sdapi/v1/nope")
    with pytest.raises(RequestError, match="accepts POST"):
        route("GET", "sdapi/v1/txt2img")
