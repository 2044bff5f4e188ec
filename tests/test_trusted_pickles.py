"""The opt-in allowlist for pickles that run code when loaded (ultralytics detectors): an unknown file is
refused with one line naming it, before ultralytics unpickles it; a listed one loads."""

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from engine.detailer.detect import DetectorCache
from engine.errors import ModelFileError
from engine.resources.trusted_pickles import DEFAULT_LIST_NAME, TrustedPickles, read_digests
from engine.settings import Settings


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_detector_missing_from_the_list_is_refused_and_a_listed_one_loads(demo_models, tmp_path):
    detector = demo_models / "adetailer" / "face_yolov8n.pt"
    listing = tmp_path / "trusted.sha256"
    listing.write_text(f"{'0' * 64}  adetailer/something_else.pt\n")
    refusing = DetectorCache(device="cpu", trusted=TrustedPickles(listing, demo_models))
    with pytest.raises(ModelFileError) as refused:
        refusing.get(detector, field="ad_model")
    message = str(refused.value)
    assert message.startswith("ad_model: adetailer/face_yolov8n.pt is a pickle that runs code when loaded")
    assert sha256(detector) in message and str(listing) in message
    assert refusing.resident() == []

    listing.write_text(f"# fetched\n{sha256(detector)}  adetailer/face_yolov8n.pt\n")
    trusting = DetectorCache(device="cpu", trusted=TrustedPickles(listing, demo_models))
    found = trusting.get(detector).detect(Image.new("RGB", (64, 64)), 0.001)
    assert found.image_size == (64, 64) and trusting.resident() == [detector.resolve()]


def test_without_a_list_every_file_is_trusted(demo_models):
    TrustedPickles(None).check(demo_models / "adetailer" / "face_yolov8n.pt", "ad_model")


def test_the_setting_names_a_list_or_the_one_in_the_models_folder(tmp_path):
    assert Settings.from_env({"MODELS_DIR": str(tmp_path)}).trusted_pickles is None
    assert Settings.from_env({"MODELS_DIR": str(tmp_path), "TRUSTED_PICKLES": "1"}).trusted_pickles == (
        tmp_path / DEFAULT_LIST_NAME
    )
    assert Settings.from_env({"TRUSTED_PICKLES": "/x/list"}).trusted_pickles == Path("/x/list")


def test_an_unreadable_list_stops_the_worker_at_start(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        TrustedPickles(tmp_path / "missing.sha256")
    bad = tmp_path / "bad.sha256"
    bad.write_text("not a digest  file.pt\n")
    with pytest.raises(ValueError, match="line 1 is not"):
        read_digests(bad)


class RunsCode:
    """A pickle that would call a function when loaded (here a harmless one)."""

    def __reduce__(self):
        return (str.upper, ("ran",))


def test_annotator_loaders_that_call_torch_load_plainly_get_torchs_tensor_only_default(tmp_path):
    # controlnet_aux's annotators call `torch.load(path)` without `weights_only`; since torch 2.6 that means
    # weights_only=True, so their .pth files cannot run code either. This guards that default.
    import pickle

    import torch

    path = tmp_path / "code.pth"
    torch.save({"weight": torch.zeros(1), "hook": RunsCode()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(path, map_location="cpu")
