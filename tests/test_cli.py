"""The local door: `python -m engine generate|save-images|models|demo-models`."""

import base64
import json
from pathlib import Path

from engine.cli import main
from engine.imaging.png import read_infotext
from engine.payload_files import fill_placeholder_images, read_job_input
from tests.seeds import seed_job


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


# --- payload files as clients and docs write them ----------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
DEMO_FACE = REPO / "examples" / "demo-face.png"


def test_a_seed_document_is_read_as_it_is():
    path = Path(__file__).parent / "fixtures" / "seeds" / "002_645e89f4f859427c.txt"
    job_input = read_job_input(path)
    assert job_input == seed_job("002_645e89f4f859427c.txt")["input"]
    assert job_input["api"]["endpoint"] == "/sdapi/v1/txt2img"


def test_placeholders_are_filled_and_real_images_kept():
    real = base64.b64encode(DEMO_FACE.read_bytes()).decode()
    payload = {
        "init_images": ["base64 image here", real],
        "mask": "not an image either",
        "alwayson_scripts": {"controlnet": {"args": [{"image": "base64 encoded image content"}]}},
    }
    filled, count = fill_placeholder_images(payload, DEMO_FACE)
    assert count == 2
    assert filled["init_images"] == [real, real]
    assert filled["alwayson_scripts"]["controlnet"]["args"][0]["image"] == real
    assert filled["mask"] == "not an image either"  # a face photo is no mask
    assert payload["init_images"][0] == "base64 image here"  # the caller's payload is not changed


def test_seed_002_document_runs_with_a_demo_face_and_checkpoint(demo_models, tmp_path):
    """A client's payload in a doc, placeholders and an absent checkpoint included, runs from the command line."""
    job = seed_job("002_645e89f4f859427c.txt")
    job["input"]["payload"].update(width=64, height=64, steps=2, seed=5)
    for unit in job["input"]["payload"]["alwayson_scripts"]["controlnet"]["args"]:
        unit["processor_res"] = 128
    document = tmp_path / "seed.md"
    document.write_text(f"# A client's request\n\n```json\n{json.dumps(job, indent=2)}\n```\n\nMore text.\n")
    out = tmp_path / "out"
    argv = ["--models", str(demo_models), "--device", "cpu", "generate", str(document), "--out", str(out),
            "--image", str(DEMO_FACE), "--checkpoint", "tiny-sdxl"]
    assert main(argv) == 0
    info = json.loads(next(out.glob("*-info.json")).read_text())
    assert info["sd_model_name"] == "tiny-sdxl" and (info["width"], info["height"]) == (64, 64)
    assert len(list(out.glob("*.png"))) == 1


def test_save_images_writes_a_runpod_response(tmp_path):
    encoded = base64.b64encode(DEMO_FACE.read_bytes()).decode()
    response = tmp_path / "response.json"
    response.write_text(json.dumps({"id": "sync-1", "status": "COMPLETED", "output": {"images": [encoded] * 2}}))
    assert main(["save-images", str(response), "--out", str(tmp_path / "out")]) == 0
    written = sorted((tmp_path / "out").glob("*.png"))
    assert [path.read_bytes() for path in written] == [DEMO_FACE.read_bytes()] * 2


def test_save_images_of_an_error_response_says_so(tmp_path, capsys):
    response = tmp_path / "response.json"
    response.write_text(json.dumps({"output": {"error": "steps: must be an integer from 1 to 150, got 0"}}))
    assert main(["save-images", str(response)]) == 2
    assert "holds an error, not images: steps:" in capsys.readouterr().err
