"""The local door: `python -m engine generate|models|demo-models`."""

import json

from engine.cli import main
from engine.imaging.png import read_infotext


def test_generate_writes_images_and_info(demo_models, tmp_path):
    payload = tmp_path / "job.json"
    payload.write_text(
        json.dumps(
            {
                "input": {
                    "api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"},
                    "payload": {
                        "prompt": "a fox",
                        "seed": 3,
                        "steps": 2,
                        "width": 64,
                        "height": 64,
                        "n_iter": 2,
                        "override_settings": {"sd_model_checkpoint": "tiny-sdxl"},
                    },
                }
            }
        )
    )
    out = tmp_path / "out"
    assert (
        main(["--models", str(demo_models), "--device", "cpu", "generate", str(payload), "--out", str(out)])
        == 0
    )
    pngs = sorted(out.glob("*.png"))
    (info_file,) = out.glob("*-info.json")
    info = json.loads(info_file.read_text())
    assert len(pngs) == 2 and info["all_seeds"] == [3, 4] and info["sd_model_name"] == "tiny-sdxl"
    assert read_infotext(pngs[1].read_bytes()) == info["infotexts"][1]


def test_bad_payload_is_an_error_exit(demo_models, tmp_path, capsys):
    payload = tmp_path / "job.json"
    payload.write_text(json.dumps({"prompt": "x", "steps": -1}))
    assert main(["--models", str(demo_models), "generate", str(payload)]) == 2
    assert capsys.readouterr().err.startswith("error: steps:")


def test_models_and_demo_models(tmp_path, capsys):
    assert main(["demo-models", str(tmp_path)]) == 0
    assert main(["--models", str(tmp_path), "models"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert "tiny-sd15.safetensors" in json.dumps(listing)
