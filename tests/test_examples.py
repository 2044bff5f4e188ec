"""Every payload in examples/ runs on the demo models, as the README promises a newcomer."""

import json
from pathlib import Path

import pytest

from engine.cli import main


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEMO_FACE = EXAMPLES / "demo-face.png"


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.json")), ids=lambda path: path.stem)
def test_example_runs_on_the_demo_models(demo_models, tmp_path, example):
    out = tmp_path / "out"
    argv = ["--models", str(demo_models), "--device", "cpu", "generate", str(example), "--out", str(out),
            "--image", str(DEMO_FACE)]
    assert main(argv) == 0
    info = json.loads(next(out.glob("*-info.json")).read_text())
    assert len(list(out.glob("*.png"))) >= len(info["all_seeds"]) >= 1
