"""The model catalog: A1111's folder layout, names, hashes and the on-disk hash cache."""

import builtins
import hashlib
import json
import logging
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from engine.errors import NotFoundError
from engine.resources import hashing
from engine.resources.catalog import VOLUME_MODEL_DIRS, ModelCatalog, locate_models_root
from engine.resources.hashing import (
    HashCache,
    addnet_hash_file,
    old_model_hash,
    read_safetensors_metadata,
    sha256_file,
)
from engine.resources.name_matching import split_hash


BIG = 1_200_000  # > 0x110000, so the legacy hash window is fully inside the file


def write_bytes(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def legacy(data: bytes) -> str:
    """A1111's old hash, computed straight from the bytes: sha256 of data[1 MiB : 1 MiB + 64 KiB], 8 hex."""
    return sha(data[1048576 : 1048576 + 65536])[:8]


def write_safetensors(path: Path, metadata: dict[str, str], values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"weight": values}, str(path), metadata=metadata)


@pytest.fixture
def opened(monkeypatch):
    """Records every file the hashing module opens."""
    paths: list[Path] = []

    def counting_open(file, *args, **kwargs):
        paths.append(Path(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(hashing, "open", counting_open, raising=False)
    return paths


@pytest.fixture
def models(tmp_path):
    """An A1111 `models/` folder with one model of each kind (and a few traps); returns (root, bytes)."""
    root = tmp_path / "webui" / "models"
    data = {
        "ckpt": write_bytes(root / "Stable-diffusion" / "sub" / "foo.safetensors", BIG, 1),
        "other": write_bytes(root / "Stable-diffusion" / "dreamy_v10.ckpt", 2000, 2),
        "cn": write_bytes(root / "ControlNet" / "control_instant_id_sdxl.safetensors", BIG, 3),
        "ipa": write_bytes(root / "ControlNet" / "ip-adapter_instant_id_sdxl.bin", BIG, 4),
    }
    (root / "Stable-diffusion" / "sub" / "foo.yaml").write_text("model: {}")
    write_bytes(root / "Stable-diffusion" / "foo.vae.safetensors", 100, 5)
    write_bytes(root / "Stable-diffusion" / ".trash" / "hidden.safetensors", 100, 6)
    diffusers_folder = root / "Stable-diffusion" / "tiny-diffusers"
    write_bytes(diffusers_folder / "unet" / "diffusion_pytorch_model.safetensors", 100, 7)
    (diffusers_folder / "model_index.json").write_text("{}")
    write_bytes(root / "VAE" / "sdxl_vae.safetensors", 100, 8)
    write_bytes(root / "VAE" / "vae-ft-mse-840000.ckpt", 100, 9)
    write_bytes(root / "VAE" / "fp16-fix" / "diffusion_pytorch_model.safetensors", 100, 10)
    (root / "VAE" / "fp16-fix" / "config.json").write_text("{}")
    write_bytes(root / "ControlNet" / "None.safetensors", 100, 11)
    data["cn_folder"] = write_bytes(root / "ControlNet" / "canny-diffusers" / "diffusion_pytorch_model.safetensors",
                                    BIG, 12)
    (root / "ControlNet" / "canny-diffusers" / "config.json").write_text("{}")
    write_bytes(root / "adetailer" / "face_yolov8n.pt", 100, 13)
    write_bytes(root / "ESRGAN" / "4x-UltraSharp.pth", 100, 14)
    write_bytes(root / "RealESRGAN" / "RealESRGAN_x4plus.pth", 100, 15)
    write_bytes(root.parent / "embeddings" / "easynegative.safetensors", 100, 16)
    write_bytes(root / "embeddings" / "extra" / "badhands.pt", 100, 17)
    write_bytes(root / "insightface" / "models" / "antelopev2" / "scrfd_10g_bnkps.onnx", 100, 18)
    write_bytes(root / "insightface" / "models" / "antelopev2" / "glintr100.onnx", 100, 19)
    write_bytes(root / "insightface" / "inswapper_128.onnx", 100, 20)
    return root, data


# --- hashing -----------------------------------------------------------------------------------------------


def test_file_hashes_match_hashlib_on_known_bytes(tmp_path):
    data = write_bytes(tmp_path / "model.safetensors", BIG, 0)
    assert sha256_file(tmp_path / "model.safetensors") == sha(data)
    assert old_model_hash(tmp_path / "model.safetensors") == legacy(data)
    assert len(legacy(data)) == 8
    assert legacy(data) != sha(data)[:8]


def test_old_hash_of_a_file_shorter_than_one_mebibyte_is_the_empty_string_hash(tmp_path):
    # A1111 seeks past the end and hashes nothing: every small file gets "e3b0c442".
    write_bytes(tmp_path / "small.pt", 5000, 0)
    assert old_model_hash(tmp_path / "small.pt") == sha(b"")[:8] == "e3b0c442"


def test_addnet_hash_covers_only_the_tensor_bytes_and_metadata_is_read(tmp_path):
    values = np.arange(64, dtype=np.float32)
    write_safetensors(tmp_path / "lora.safetensors", {"ss_output_name": "myStyle"}, values)
    assert addnet_hash_file(tmp_path / "lora.safetensors") == sha(values.tobytes())
    assert read_safetensors_metadata(tmp_path / "lora.safetensors") == {"ss_output_name": "myStyle"}
    write_bytes(tmp_path / "not.safetensors", 100, 0)
    with pytest.raises(ValueError):
        read_safetensors_metadata(tmp_path / "not.safetensors")


def test_hash_cache_survives_a_restart_without_reading_the_file_again(models, opened):
    root, data = models
    first = ModelCatalog(root)
    entry = first.find_checkpoint("foo")
    assert (entry.sha256, entry.hash) == (sha(data["ckpt"]), legacy(data["ckpt"]))
    assert entry.sha256 == sha(data["ckpt"])  # asked twice, read once per hash kind
    assert opened == [entry.path, entry.path]
    opened.clear()

    restarted = ModelCatalog(root)  # a new process: nothing in memory
    again = restarted.find_checkpoint("foo")
    assert again.title == f"sub/foo.safetensors [{sha(data['ckpt'])[:10]}]"
    assert again.sha256 == sha(data["ckpt"])
    assert again.hash == legacy(data["ckpt"])
    assert opened == []
    stored = json.loads((root / ".model-hashes.json").read_text())["files"]["Stable-diffusion/sub/foo.safetensors"]
    assert stored["sha256"] == sha(data["ckpt"])
    assert stored["size"] == BIG


def test_a_changed_file_is_hashed_again(tmp_path, opened):
    path = tmp_path / "m.safetensors"
    write_bytes(path, 3000, 1)
    cache = HashCache(tmp_path / "cache.json", tmp_path)
    cache.get(path)
    changed = write_bytes(path, 3001, 2)
    assert HashCache(tmp_path / "cache.json", tmp_path).get(path) == sha(changed)
    assert len(opened) == 2


def test_concurrent_requests_hash_a_file_once(tmp_path, opened, monkeypatch):
    path = tmp_path / "big.safetensors"
    data = write_bytes(path, BIG, 3)
    cache = HashCache(tmp_path / "cache.json", tmp_path)

    def slow_sha256(file: Path) -> str:
        time.sleep(0.05)  # a long hash, so the threads really overlap
        return sha256_file(file)

    monkeypatch.setitem(hashing.HASHERS, "sha256", slow_sha256)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(path))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [sha(data)] * 4
    assert len(opened) == 1


def test_two_caches_on_one_file_keep_each_others_entries_and_leave_no_temporaries(tmp_path):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    write_bytes(first, 100, 1)
    write_bytes(second, 100, 2)
    HashCache(tmp_path / "cache.json", tmp_path).get(first)
    HashCache(tmp_path / "cache.json", tmp_path).get(second)
    assert set(json.loads((tmp_path / "cache.json").read_text())["files"]) == {"a.pt", "b.pt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt", "cache.json"]


def test_an_unwritable_cache_keeps_hashes_in_memory(tmp_path, caplog):
    path = tmp_path / "m.pt"
    data = write_bytes(path, 100, 1)
    (tmp_path / "blocker").write_text("a file where the cache folder should be")
    cache = HashCache(tmp_path / "blocker" / "cache.json", tmp_path)
    with caplog.at_level(logging.WARNING):
        assert cache.get(path) == sha(data)
    assert cache.peek(path) == sha(data)
    assert "could not write hash cache" in caplog.text


# --- checkpoints ------------------------------------------------------------------------------------------


def test_checkpoint_listing_follows_a1111(models):
    root, _ = models
    entries = {e.name: e for e in ModelCatalog(root).checkpoints()}
    assert set(entries) == {"sub/foo.safetensors", "dreamy_v10.ckpt", "tiny-diffusers"}  # no *.vae.*, hidden
    foo = entries["sub/foo.safetensors"]
    assert (foo.name_for_extra, foo.model_name, foo.is_folder) == ("foo", "sub_foo", False)
    assert foo.config == root / "Stable-diffusion" / "sub" / "foo.yaml"
    assert foo.title == "sub/foo.safetensors"  # A1111 shows no hash until the sha256 is known
    folder = entries["tiny-diffusers"]
    assert (folder.is_folder, folder.name_for_extra, folder.hash, folder.sha256) == (True, "tiny-diffusers", None, None)


@pytest.mark.parametrize(
    "spelling",
    [
        "sub/foo.safetensors",
        "sub\\foo.safetensors",
        "foo",
        "sub_foo",
        "sub/foo",
        "  foo ",
        "sub/foo.safetensors [{old}]",
        "sub/foo.safetensors [{short}]",
        "foo [{short}]",
        "foo [{SHORT}]",
        "{old}",
    ],
)
def test_checkpoint_resolves_in_every_a1111_spelling(models, spelling):
    root, data = models
    hashes = {"old": legacy(data["ckpt"]), "short": sha(data["ckpt"])[:10], "SHORT": sha(data["ckpt"])[:10].upper()}
    entry = ModelCatalog(root).find_checkpoint(spelling.format(**hashes))
    assert entry.path == root / "Stable-diffusion" / "sub" / "foo.safetensors"


def test_bare_sha256_ids_resolve_once_the_hash_is_known(models):
    root, data = models
    catalog = ModelCatalog(root)
    with pytest.raises(NotFoundError):
        catalog.find_checkpoint(sha(data["ckpt"])[:10])
    assert catalog.find_checkpoint("foo").sha256 == sha(data["ckpt"])
    assert catalog.find_checkpoint(sha(data["ckpt"])[:10]).name == "sub/foo.safetensors"
    assert catalog.find_checkpoint(sha(data["ckpt"])).name == "sub/foo.safetensors"


def test_a_stale_hash_still_resolves_by_name_and_is_logged(models, caplog):
    root, _ = models
    with caplog.at_level(logging.WARNING):
        entry = ModelCatalog(root).find_checkpoint("dreamy_v10.ckpt [0123456789]")
    assert entry.name == "dreamy_v10.ckpt"
    assert "differs" in caplog.text


def test_closest_match_is_opt_in(models):
    root, _ = models
    catalog = ModelCatalog(root)
    assert catalog.find_checkpoint("dreamy", closest=True).name == "dreamy_v10.ckpt"
    with pytest.raises(NotFoundError):
        catalog.find_checkpoint("dreamy")


def test_unknown_checkpoint_lists_what_is_available(models):
    root, _ = models
    with pytest.raises(NotFoundError) as caught:
        ModelCatalog(root).find_checkpoint("missing_model", field="override_settings.sd_model_checkpoint")
    assert caught.value.field == "override_settings.sd_model_checkpoint"
    for name in ("'dreamy_v10.ckpt'", "'sub/foo.safetensors'", "'tiny-diffusers'", "'missing_model'"):
        assert name in str(caught.value)


def test_refresh_and_a_miss_pick_up_new_files(models):
    root, _ = models
    catalog = ModelCatalog(root)
    assert len(catalog.checkpoints()) == 3
    write_bytes(root / "Stable-diffusion" / "late.safetensors", 100, 30)
    assert len(catalog.checkpoints()) == 3  # listings are kept until refreshed
    catalog.refresh("checkpoints")
    assert "late.safetensors" in [e.name for e in catalog.checkpoints()]
    assert catalog.loras() == ()
    write_bytes(root / "Lora" / "later.safetensors", 100, 31)
    assert catalog.find_lora("later").name == "later"  # a miss rescans once


# --- VAE, LoRA, ControlNet, files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("sdxl_vae.safetensors", "sdxl_vae.safetensors"),
        ("sdxl_vae", "sdxl_vae.safetensors"),
        ("vae-ft-mse-840000.ckpt", "vae-ft-mse-840000.ckpt"),
        ("foo.vae.safetensors", "foo.vae.safetensors"),
        ("fp16-fix", "fp16-fix"),
    ],
)
def test_vae_resolves_by_file_name(models, spelling, expected):
    root, _ = models
    assert ModelCatalog(root).find_vae(spelling).name == expected


def test_vae_listing_and_automatic_vae_near_checkpoint(models):
    root, _ = models
    catalog = ModelCatalog(root)
    assert [e.name for e in catalog.vaes()] == [
        "foo.vae.safetensors", "fp16-fix", "sdxl_vae.safetensors", "vae-ft-mse-840000.ckpt"]
    near = catalog.vae_near_checkpoint(catalog.find_checkpoint("foo"))
    assert near is not None
    assert near.name == "foo.vae.safetensors"
    assert catalog.vae_near_checkpoint(catalog.find_checkpoint("dreamy_v10")) is None
    with pytest.raises(NotFoundError, match="sd_vae: no VAE named 'nope'.*'sdxl_vae.safetensors'"):
        catalog.find_vae("nope")


def test_lora_names_aliases_and_hashes(tmp_path):
    root = tmp_path / "models"
    values = np.linspace(0, 1, 32, dtype=np.float32)
    write_safetensors(root / "Lora" / "chars" / "file_name_v2.safetensors", {"ss_output_name": "trainedAs"}, values)
    write_safetensors(root / "LyCORIS" / "loha.safetensors", {"sshs_model_hash": "f" * 64}, values)
    legacy_lora = write_bytes(root / "Lora" / "old.pt", 300, 1)
    catalog = ModelCatalog(root)
    for spelling in ("file_name_v2", "chars/file_name_v2", "trainedAs"):
        assert catalog.find_lora(spelling).name == "file_name_v2"
    assert catalog.find_lora("file_name_v2").shorthash == sha(values.tobytes())[:12]
    assert catalog.find_lora("loha").hash == "f" * 64  # the trainer's hash is trusted, as in A1111
    assert catalog.find_lora("old").hash == sha(legacy_lora)
    with pytest.raises(NotFoundError, match="lora: no LoRA named 'nope'.*'file_name_v2', 'loha', 'old'"):
        catalog.find_lora("nope")


def test_controlnet_names_and_hash_matching(models, caplog):
    root, data = models
    catalog = ModelCatalog(root)
    cn_hash, ipa_hash = legacy(data["cn"]), legacy(data["ipa"])
    assert [e.title for e in catalog.controlnets()] == [
        f"canny-diffusers [{legacy(data['cn_folder'])}]",
        f"control_instant_id_sdxl [{cn_hash}]",
        f"ip-adapter_instant_id_sdxl [{ipa_hash}]",
    ]  # sorted by file name; "None" is not a model
    entry, matched = catalog.find_controlnet(f"ip-adapter_instant_id_sdxl [{ipa_hash}]")
    assert (entry.path.name, matched) == ("ip-adapter_instant_id_sdxl.bin", True)
    assert catalog.find_controlnet("CONTROL_INSTANT_ID_SDXL").hash_matched is None
    assert catalog.find_controlnet("control_instant_id_sdxl.safetensors").entry.name == "control_instant_id_sdxl"
    renamed = catalog.find_controlnet(f"old_name_for_instantid [{cn_hash}]")
    assert (renamed.entry.name, renamed.hash_matched) == ("control_instant_id_sdxl", True)
    with caplog.at_level(logging.WARNING):
        stale = catalog.find_controlnet("control_instant_id_sdxl [deadbeef]")
    assert (stale.entry.name, stale.hash_matched) == ("control_instant_id_sdxl", False)
    assert "deadbeef" in caplog.text
    assert catalog.find_controlnet("instant_id").entry.name == "control_instant_id_sdxl"  # shortest containing
    with pytest.raises(NotFoundError, match=r"controlnet\.model: no ControlNet model named 'depth'"):
        catalog.find_controlnet("depth")


@pytest.mark.parametrize(
    ("kind", "spelling", "expected_name"),
    [
        ("adetailer", "face_yolov8n.pt", "face_yolov8n.pt"),
        ("adetailer", "face_yolov8n", "face_yolov8n.pt"),
        ("esrgan", "4x-UltraSharp", "4x-UltraSharp.pth"),
        ("realesrgan", "RealESRGAN_x4plus.pth", "RealESRGAN_x4plus.pth"),
        ("embeddings", "easynegative", "easynegative.safetensors"),
        ("embeddings", "badhands", "extra/badhands.pt"),
        ("insightface", "antelopev2", "models/antelopev2"),
        ("insightface", "inswapper_128.onnx", "inswapper_128.onnx"),
    ],
)
def test_files_resolve_by_name_or_stem(models, kind, spelling, expected_name):
    root, _ = models
    assert ModelCatalog(root).find_file(kind, spelling).name == expected_name


def test_embeddings_are_found_beside_and_inside_the_models_folder(models):
    root, _ = models
    catalog = ModelCatalog(root)
    assert catalog.folders("embeddings") == [root.parent / "embeddings", root / "embeddings"]
    assert {e.path for e in catalog.entries("embeddings")} == {
        root.parent / "embeddings" / "easynegative.safetensors", root / "embeddings" / "extra" / "badhands.pt"}


def test_unknown_kind_and_file_errors_name_the_choices(models):
    root, _ = models
    catalog = ModelCatalog(root)
    with pytest.raises(NotFoundError, match="kind: unknown model kind 'hypernetworks'.*'adetailer'"):
        catalog.entries("hypernetworks")
    with pytest.raises(NotFoundError, match="ad_model: no ADetailer model named 'hand_yolov8n.pt'.*'face_yolov8n.pt'"):
        catalog.find_file("adetailer", "hand_yolov8n.pt", field="ad_model")


def test_not_found_errors_name_folders_relative_to_the_models_folder(models):
    """The message goes to clients: it names the layout folders, never the server's absolute paths."""
    root, _ = models
    with pytest.raises(NotFoundError) as raised:
        ModelCatalog(root).find_file("adetailer", "hand_yolov8n.pt", field="ad_model")
    assert "(searched adetailer/)" in str(raised.value) and str(root) not in str(raised.value)
    with pytest.raises(NotFoundError) as raised:
        ModelCatalog(root).find_lora("nope")
    assert "Lora/" in str(raised.value) and str(root) not in str(raised.value)


def test_describe_summarises_every_kind(models):
    root, data = models
    summary = ModelCatalog(root).describe()
    assert summary["root"] == str(root)
    models_by_kind = summary["models"]
    assert set(models_by_kind) == {"checkpoints", "vae", "lora", "embeddings", "esrgan", "realesrgan",
                                   "adetailer", "controlnet", "insightface", "codeformer", "gfpgan"}
    assert models_by_kind["checkpoints"]["names"] == ["dreamy_v10.ckpt", "sub/foo.safetensors", "tiny-diffusers"]
    assert f"control_instant_id_sdxl [{legacy(data['cn'])}]" in models_by_kind["controlnet"]["names"]
    assert models_by_kind["lora"] == {"folders": [], "names": []}
    assert models_by_kind["vae"]["folders"] == [str(root / "VAE"), str(root / "Stable-diffusion")]


def test_split_hash():
    assert split_hash("control_instant_id_sdxl [c5c25a50]") == ("control_instant_id_sdxl", "c5c25a50")
    assert split_hash("name [not hex]") == ("name [not hex]", None)
    assert split_hash("plain") == ("plain", None)


# --- locating the models root ----------------------------------------------------------------------------


def test_models_dir_from_the_environment_wins(tmp_path):
    (tmp_path / "volume" / "stable-diffusion-webui" / "models" / "Stable-diffusion").mkdir(parents=True)
    env = {"MODELS_DIR": str(tmp_path / "mine")}
    assert locate_models_root(env, tmp_path / "default", volume_root=tmp_path / "volume") == tmp_path / "mine"


def test_an_a1111_install_on_the_network_volume_is_found(tmp_path):
    volume = tmp_path / "runpod-volume"
    (volume / "stable-diffusion-webui" / "models" / "Stable-diffusion").mkdir(parents=True)
    found = locate_models_root({"MODELS_DIR": ""}, tmp_path / "default", volume_root=volume)
    assert found == volume / "stable-diffusion-webui" / "models"


@pytest.mark.parametrize("relative", VOLUME_MODEL_DIRS)
def test_every_volume_layout_in_the_table_is_detected(tmp_path, relative):
    (tmp_path / relative / "Stable-diffusion").mkdir(parents=True)
    assert locate_models_root({}, tmp_path / "default", volume_root=tmp_path) == tmp_path / relative


def test_without_a_volume_the_default_is_used(tmp_path):
    (tmp_path / "volume" / "stable-diffusion-webui" / "models").mkdir(parents=True)  # no Stable-diffusion inside
    assert locate_models_root(os.environ | {"MODELS_DIR": ""}, tmp_path / "d", tmp_path / "volume") == tmp_path / "d"
