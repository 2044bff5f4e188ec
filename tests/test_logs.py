"""What a newcomer sees on stderr: the worker's own log lines and progress, not third-party noise."""

import json
import os
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
# Messages that are not the user's concern (each was printed on every run before it was silenced).
NOISE = (
    "should be kept in float32",  # diffusers, on every single-file load
    "Token indices sequence length is longer",  # transformers, although long prompts are supported
    "Should have tb<=t1",  # torchsde, at the Brownian tree's end points
    "Should have ta>=t0",
    "Loading pipeline components",  # diffusers' load progress bar
    "torch.jit.script` is deprecated",  # torch, when spandrel_extra_arches' CodeFormer is imported
)


def test_generate_prints_progress_and_no_third_party_noise(demo_models, tmp_path):
    long_prompt = ", ".join(["a long prompt"] * 12)  # over 77 tokens: A1111 chunks it
    job = {
        "input": {
            "api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"},
            "payload": {"prompt": long_prompt, "steps": 3, "width": 64, "height": 64, "seed": 1,
                        "sampler_name": "DPM++ SDE", "scheduler": "karras"},
        }
    }
    payload = tmp_path / "job.json"
    payload.write_text(json.dumps(job))
    command = [sys.executable, "-m", "engine", "--models", str(demo_models), "--device", "cpu",
               "generate", str(payload), "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "batch 1/1" in done.stderr and "wrote" in done.stderr
    for noise in NOISE:
        assert noise not in done.stderr, noise


def test_demo_models_print_no_third_party_noise(tmp_path):
    """`demo-models` writes the face restorers, which imports spandrel_extra_arches' CodeFormer."""
    command = [sys.executable, "-m", "engine", "demo-models", str(tmp_path / "models")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "models" / "Codeformer").is_dir()
    for noise in NOISE:
        assert noise not in done.stderr, noise
