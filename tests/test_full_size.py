"""Full-size random checkpoints (`engine.demo.full_size`) have the released models' shapes and load straight
to their dtype without a second copy of the weights."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine.demo.full_size import full_size_components, write_full_size_checkpoint


ROOT = Path(__file__).resolve().parents[1]
# Parameter counts of the released models (runwayml/stable-diffusion-v1-5, stable-diffusion-xl-base-1.0).
RELEASED_PARAMETERS = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
             "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_full_size_models_have_the_released_sizes(family):
    components = full_size_components(family)
    counts = {name: sum(p.numel() for p in components[name].parameters()) for name in RELEASED_PARAMETERS[family]}
    assert counts == RELEASED_PARAMETERS[family]
    assert all(p.device.type == "meta" for p in components["unet"].parameters())  # built without memory


LOAD_PROBE = """
import json, resource, sys, torch
from pathlib import Path
from engine.resources.loader import Precision, load_pipeline
path = Path(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pipeline = load_pipeline(path, [path.parents[1] / "configs"], Precision(torch.device("cpu"), torch.float16))
total = 0
for name in ("unet", "text_encoder"):
    for tensor in getattr(pipeline, name).parameters():
        total += float(tensor.float().sum())  # every weight read, as a copy to the GPU would
rise = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"rise": rise, "unet": str(pipeline.unet.dtype), "text_encoder": str(pipeline.text_encoder.dtype)}))
"""


@pytest.mark.slow
def test_full_size_sd15_loads_without_a_second_copy(tmp_path):
    path = write_full_size_checkpoint("sd15", "full-sd15", tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.get_slice("model.diffusion_model.input_blocks.0.0.weight").get_dtype() == "F16"
    done = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(path)], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["unet"] == result["text_encoder"] == str(torch.float16)
    assert result["rise"] <= 1.2 * path.stat().st_size
