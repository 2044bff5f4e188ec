"""Every payload in examples/ is a valid request for the demo models (translated and its models resolved,
without generating; the scripts and features themselves are exercised by their own tests)."""

import json
from pathlib import Path

import pytest

from engine.wire.envelope import IMG2IMG, parse_job_input
from engine.wire.img2img import Img2ImgRequest
from engine.wire.scripts import selectable_script
from engine.wire.txt2img import Txt2ImgRequest


EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.json"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_is_a_valid_request(sd15_engine, path):
    call = parse_job_input(json.loads(path.read_text())["input"])
    img2img = call.endpoint.strip("/") == IMG2IMG
    request = (Img2ImgRequest if img2img else Txt2ImgRequest).parse(call.payload)
    assert request.width * request.height <= 128 * 128  # small enough for a CPU
    selectable_script(request.script_name, img2img)
    sd15_engine.check_request(request)
