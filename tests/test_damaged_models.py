"""Damaged, truncated or vanished model files: one clear error naming the file (relative to the models folder),
nothing half-loaded in any cache, the next request unaffected; a file removed after it was listed refreshes the
listing. Damaged files are made from the demo models by truncating or overwriting their first bytes.
"""

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from engine import Engine
from engine.errors import ModelFileError, NotFoundError
from engine.imaging.png import encode_base64
from engine.resources.model_files import damage


SMALL = {"prompt": "a red fox", "seed": 4, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler"}
HIRES = {**SMALL, "enable_hr": True, "hr_scale": 2, "denoising_strength": 0.5}


def truncated(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def garbled(source: Path, target: Path) -> Path:
    """The first 64 bytes overwritten: a safetensors header length or a zip archive's first entry."""
    target.parent.mkdir(parents=True, exist_ok=True)
    data = bytearray(source.read_bytes())
    data[:64] = bytes(range(200, 256)) + bytes(8)
    target.write_bytes(bytes(data))
    return target


@pytest.fixture(scope="module")
def models(demo_models, tmp_path_factory) -> Path:
    """The demo models folder mirrored by symlinks, so that broken files can sit beside the good ones."""
    root = tmp_path_factory.mktemp("damaged-models")
    for source in demo_models.rglob("*"):
        if source.is_file() and not source.name.startswith("."):
            target = root / source.relative_to(demo_models)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
    return root


@pytest.fixture(scope="module")
def engine(models):
    return Engine.from_models_dir(models, device="cpu", default_checkpoint="tiny-sd15")


@pytest.fixture(scope="module")
def reference(engine):
    return engine.txt2img(SMALL).images[0].tobytes()


def assert_unaffected(engine, reference) -> None:
    assert engine.txt2img(SMALL).images[0].tobytes() == reference


# --- the checks ---------------------------------------------------------------------------------------------


def test_damage_is_found_from_the_file_structure(demo_models, tmp_path):
    checkpoint = demo_models / "Stable-diffusion" / "tiny-sd15.safetensors"
    esrgan = demo_models / "ESRGAN" / "ESRGAN_4x.pth"
    assert damage(checkpoint, demo_models) is None and damage(esrgan, demo_models) is None
    assert damage(demo_models / "configs" / "tiny-sd15", demo_models) is None  # a folder: its safetensors
    cut = truncated(checkpoint, tmp_path / "Stable-diffusion" / "cut.safetensors")
    assert damage(cut, tmp_path).startswith("Stable-diffusion/cut.safetensors is truncated: ")
    assert "header is damaged" in damage(garbled(checkpoint, tmp_path / "g.safetensors"), tmp_path)
    padded = tmp_path / "padded.safetensors"
    padded.write_bytes(checkpoint.read_bytes() + b"\0" * 10)
    assert damage(padded, tmp_path) == "padded.safetensors is damaged: 10 bytes more than its header describes"
    assert damage(truncated(esrgan, tmp_path / "x.pth"), tmp_path) == (
        "x.pth is truncated: its archive has no central directory"
    )
    assert "start of its archive is overwritten" in damage(garbled(esrgan, tmp_path / "y.pth"), tmp_path)
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    assert damage(legacy, tmp_path) is None  # an old-format pickle: its loader judges it


# --- through the engine -------------------------------------------------------------------------------------


@pytest.mark.parametrize("damaged", [truncated, garbled])
def test_a_damaged_checkpoint_is_named_and_never_cached(engine, models, reference, damaged):
    name = f"broken-{damaged.__name__}.safetensors"
    damaged(models / "Stable-diffusion" / "tiny-sd15.safetensors", models / "Stable-diffusion" / name)
    resident = engine._pipelines.resident()
    with pytest.raises(ModelFileError, match=rf"^sd_model_checkpoint: Stable-diffusion/{name} is .*replace the file$"):
        engine.txt2img({**SMALL, "override_settings": {"sd_model_checkpoint": name}})
    assert engine._pipelines.resident() == resident  # nothing evicted for it, nothing half-loaded
    assert_unaffected(engine, reference)


def test_a_checkpoint_its_loader_cannot_read_is_named(engine, models, reference):
    """Intact as a file, but only the tensors that tell its family and size: the loader's failure is reported."""
    source = models / "Stable-diffusion" / "tiny-sd15.safetensors"
    with safe_open(str(source), framework="pt") as handle:
        kept = {key: handle.get_tensor(key) for key in handle.keys() if "input_blocks.0.0" in key or "token_embedding" in key}  # noqa: SIM118
    save_file(kept, models / "Stable-diffusion" / "partial.safetensors")
    with pytest.raises(ModelFileError, match=r"^sd_model_checkpoint: Stable-diffusion/partial.safetensors cannot be "
                                             r"loaded \(.+\); the file may be damaged$"):
        engine.txt2img({**SMALL, "override_settings": {"sd_model_checkpoint": "partial"}})
    assert all(entry.name != "partial.safetensors" for entry in engine._pipelines.resident())
    assert_unaffected(engine, reference)


def test_a_damaged_vae_is_named_and_never_cached(engine, models, reference):
    garbled(models / "Stable-diffusion" / "tiny-sd15.safetensors", models / "VAE" / "broken.safetensors")
    with pytest.raises(ModelFileError, match=r"^override_settings.sd_vae: VAE/broken.safetensors has a damaged|"
                                             r"^override_settings.sd_vae: VAE/broken.safetensors is not a readable"):
        engine.txt2img({**SMALL, "override_settings": {"sd_vae": "broken.safetensors"}})
    assert engine.vaes.resident() == []
    assert_unaffected(engine, reference)


def test_a_damaged_lora_is_skipped_with_a_warning_and_leaves_no_trace(engine, models, reference):
    """A1111 logs a LoRA it cannot load and generates without it; the warning names the file."""
    truncated(models / "Stable-diffusion" / "tiny-sd15.safetensors", models / "Lora" / "broken.safetensors")
    pipe = engine._pipelines.get(engine.resolve_checkpoint(None))
    before = {name: tensor.clone() for name, tensor in pipe.unet.state_dict().items()}
    result = engine.txt2img({**SMALL, "prompt": "a red fox <lora:broken:1>"})
    assert result.warnings[0].startswith("LoRA 'broken' skipped: Lora/broken.safetensors is truncated: ")
    assert result.images[0].tobytes() == reference  # the tag is removed from the prompt, the LoRA not applied
    after = pipe.unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert_unaffected(engine, reference)


def test_a_damaged_embedding_stays_text_with_a_warning_until_replaced(engine, models, reference):
    folder = models / "embeddings"
    truncated(models / "Stable-diffusion" / "tiny-sd15.safetensors", folder / "fox-style.safetensors")
    payload = {**SMALL, "prompt": "a red fox, fox-style"}
    result = engine.txt2img(payload)
    assert result.warnings == [
        "textual inversion embedding 'fox-style' left as plain text: embeddings/fox-style.safetensors is "
        f"truncated: {(folder / 'fox-style.safetensors').stat().st_size} bytes of the "
        f"{(models / 'Stable-diffusion' / 'tiny-sd15.safetensors').stat().st_size} its header describes"
    ]
    # Replaced by a good file, it is used by the next request (the database keeps nothing of the broken one).
    (folder / "fox-style.safetensors").unlink()
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(0))},
              folder / "fox-style.safetensors")
    fixed = engine.txt2img(payload)
    assert fixed.warnings == [] and 'TI hashes: "fox-style: ' in fixed.infotexts[0]
    (folder / "fox-style.safetensors").unlink()
    assert_unaffected(engine, reference)


def test_a_damaged_upscaler_is_named_and_never_cached(engine, models, reference):
    truncated(models / "ESRGAN" / "ESRGAN_4x.pth", models / "ESRGAN" / "broken.pth")
    good = engine.txt2img({**HIRES, "hr_upscaler": "ESRGAN_4x"}).images[0].tobytes()
    with pytest.raises(ModelFileError, match=r"^upscaler: ESRGAN/broken.pth is truncated: its archive has no "
                                             r"central directory; replace the file$"):
        engine.txt2img({**HIRES, "hr_upscaler": "broken"})
    assert all(path.name != "broken.pth" for path, _ in engine.upscalers.models.resident())
    assert engine.txt2img({**HIRES, "hr_upscaler": "ESRGAN_4x"}).images[0].tobytes() == good
    assert_unaffected(engine, reference)


def test_a_detector_ultralytics_cannot_load_is_named_and_never_cached(engine, models, reference):
    torch.save({"epoch": 1}, models / "adetailer" / "broken.pt")  # an intact archive, not a YOLO model
    unit = {"ad_model": "broken.pt", "ad_confidence": 0.01}
    payload = {**SMALL, "alwayson_scripts": {"ADetailer": {"args": [True, False, unit]}}}
    with pytest.raises(ModelFileError) as raised:
        engine.txt2img(payload)
    message = str(raised.value)
    assert message.startswith("alwayson_scripts.ADetailer.args[2].ad_model: adetailer/broken.pt cannot be loaded (")
    assert str(models) not in message  # no server paths in the message
    assert all(path.name != "broken.pt" for path in engine.detectors.resident())
    assert_unaffected(engine, reference)


def test_a_damaged_controlnet_is_named_and_never_cached(engine, models, reference):
    garbled(models / "ControlNet" / "control_v11p_sd15_canny.safetensors", models / "ControlNet" / "broken.safetensors")
    unit = {"module": "canny", "model": "broken", "image": encode_base64(Image.new("RGB", (64, 64), "white"), None)}
    with pytest.raises(ModelFileError, match=r"^controlnet.model: ControlNet/broken.safetensors "):
        engine.txt2img({**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert all(path.name != "broken.safetensors" for path in engine.control_models.resident())
    assert_unaffected(engine, reference)


def test_a_file_removed_after_listing_is_an_error_and_refreshes_the_listing(engine, models, reference):
    doomed = models / "Stable-diffusion" / "doomed.safetensors"
    shutil.copy(models / "Stable-diffusion" / "tiny-sd15.safetensors", doomed)
    engine.handle("POST", "/sdapi/v1/refresh-checkpoints", {})
    listed = [model["model_name"] for model in engine.handle("GET", "/sdapi/v1/sd-models", {})]
    assert "doomed" in listed
    doomed.unlink()
    with pytest.raises(NotFoundError, match=r"^sd_model_checkpoint: Stable-diffusion/doomed.safetensors is no "
                                            r"longer in the models folder"):
        engine.txt2img({**SMALL, "override_settings": {"sd_model_checkpoint": "doomed"}})
    listed = [model["model_name"] for model in engine.handle("GET", "/sdapi/v1/sd-models", {})]
    assert "doomed" not in listed and "tiny-sd15" in listed
    assert_unaffected(engine, reference)
