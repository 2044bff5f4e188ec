"""Checkpoints kept within a memory budget: LRU eviction, sizes from parameters, shared components."""

import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.resources.cache import (
    FINGERPRINT_SAMPLES,
    GIB,
    PipelineCache,
    estimate_checkpoint_bytes,
    fingerprint,
    module_bytes,
    resolve_budget,
)
from engine.resources.loader import Precision, load_pipeline


class FakePipeline:
    """Stands in for a DiffusionPipeline: named components, replaceable by attribute."""

    def __init__(self, **components):
        self.__dict__.update(components)
        self.names = list(components)

    @property
    def components(self):
        return {name: getattr(self, name) for name in self.names}


def linear(size: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(size, size)


UNET_BYTES = (100 * 100 + 100) * 4
VAE_BYTES = (10 * 10 + 10) * 4


def fake_loader(loaded: list, vae_seeds: dict | None = None):
    """Each key gets its own UNet; keys in `vae_seeds` get a VAE from that seed (same seed, same weights)."""

    def load(key):
        logging.getLogger("test").info("loading %s", key)
        loaded.append(key)
        seed = sum(map(ord, key))
        return FakePipeline(
            unet=linear(100, seed),
            vae=linear(10, (vae_seeds or {}).get(key, seed + 1)),
            scheduler={"not": "a module"},
        )

    return load


def test_sizes_come_from_parameters_and_buffers():
    assert module_bytes(torch.nn.Linear(10, 20)) == (10 * 20 + 20) * 4
    assert module_bytes(torch.nn.Linear(10, 20).half()) == (10 * 20 + 20) * 2
    # BatchNorm: weight, bias, running mean and var (fp32), and an int64 step counter.
    assert module_bytes(torch.nn.BatchNorm1d(8)) == 4 * 8 * 4 + 8


def test_least_recently_used_is_evicted_when_the_budget_is_full():
    loaded = []
    cache = PipelineCache(fake_loader(loaded), budget_bytes=int(2.5 * (UNET_BYTES + VAE_BYTES)))
    first = cache.get("a")
    cache.get("b")
    assert cache.get("a") is first and cache.resident() == ["b", "a"]
    cache.get("c")  # three do not fit: "b" is the least recently used
    assert cache.resident() == ["a", "c"] and cache.used_bytes() == 2 * (UNET_BYTES + VAE_BYTES)
    cache.get("b")
    assert loaded == ["a", "b", "c", "b"] and cache.resident() == ["c", "b"]


def test_room_is_made_before_loading_when_the_size_can_be_estimated(caplog):
    size = UNET_BYTES + VAE_BYTES
    cache = PipelineCache(fake_loader([]), budget_bytes=int(1.5 * size), estimate=lambda key: size)
    cache.get("a")
    with caplog.at_level(logging.INFO):
        cache.get("b")
    messages = [record.getMessage() for record in caplog.records]
    assert messages.index("evicting a to stay within the model memory budget") < messages.index("loading b")


def test_a_checkpoint_larger_than_the_budget_still_loads_alone():
    cache = PipelineCache(fake_loader([]), budget_bytes=1000)
    cache.get("a")
    cache.get("b")
    assert cache.resident() == ["b"]


def test_identical_components_are_loaded_once():
    cache = PipelineCache(fake_loader([], vae_seeds={"x": 7, "y": 7, "z": 8}), budget_bytes=None)
    x, y, z = cache.get("x"), cache.get("y"), cache.get("z")
    assert y.vae is x.vae and z.vae is not x.vae and y.unet is not x.unet
    assert cache.used_bytes() == 3 * UNET_BYTES + 2 * VAE_BYTES
    assert cache.describe()["shared_components"] == 1


def test_nearly_identical_weights_or_other_configs_are_not_shared():
    torch.manual_seed(0)
    base = torch.nn.Linear(64, 64)
    nudged = torch.nn.Linear(64, 64)
    nudged.load_state_dict(base.state_dict())
    with torch.no_grad():
        nudged.weight.add_(1e-3)  # a fine-tune moves (almost) every weight
    assert fingerprint(base) != fingerprint(nudged)
    twin = torch.nn.Linear(64, 64)
    twin.load_state_dict(base.state_dict())
    assert fingerprint(twin) == fingerprint(base)
    twin.config = {"scaling_factor": 0.13025, "_name_or_path": "elsewhere"}
    other = torch.nn.Linear(64, 64)
    other.load_state_dict(base.state_dict())
    other.config = {"scaling_factor": 0.18215, "_name_or_path": "here"}
    assert fingerprint(twin) != fingerprint(other)


def test_two_files_of_one_checkpoint_share_every_module(demo_models, tmp_path):
    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    for name in ("one", "two"):
        shutil.copy(
            demo_models / "Stable-diffusion" / "tiny-sd15.safetensors", folder / f"{name}.safetensors"
        )
    precision = Precision.for_device("cpu")
    cache = PipelineCache(
        lambda name: load_pipeline(folder / f"{name}.safetensors", [demo_models / "configs"], precision),
        budget_bytes=None,
    )
    one = cache.get("one")
    alone = cache.used_bytes()
    two = cache.get("two")
    assert all(
        getattr(two, name) is module
        for name, module in one.components.items()
        if isinstance(module, torch.nn.Module)
    )
    assert (
        cache.used_bytes()
        == alone
        == sum(module_bytes(m) for m in one.components.values() if isinstance(m, torch.nn.Module))
    )
    # The header-only estimate misses only buffers the model makes itself (the text encoder's position ids).
    assert estimate_checkpoint_bytes(folder / "one.safetensors", torch.float32) == pytest.approx(
        alone, rel=0.01
    )


def test_estimate_reads_safetensors_headers(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(
        {
            "a": torch.zeros(3, 4, dtype=torch.float16),
            "b": torch.zeros(5, dtype=torch.float16),
            "step": torch.zeros(1, dtype=torch.int64),
        },
        path,
    )
    assert estimate_checkpoint_bytes(path, torch.float32) == 17 * 4 + 8
    assert estimate_checkpoint_bytes(path, torch.float16) == 17 * 2 + 8


def test_budget_from_configuration_or_device():
    assert resolve_budget(1.5, torch.device("cpu")) == int(1.5 * GIB)
    with pytest.raises(ValueError, match="MODEL_MEMORY_BUDGET_GB"):
        resolve_budget(0, torch.device("cpu"))
    assert resolve_budget(None, torch.device("cpu")) > 0


def test_checkpoints_differing_in_one_embedding_row_do_not_share_the_text_encoder(demo_models, tmp_path):
    # As a textual inversion merged into a checkpoint: one token-embedding row changed, at the elements the
    # fingerprint's strided sample skips, so only a full comparison tells the two text encoders apart.
    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    original = demo_models / "Stable-diffusion" / "tiny-sd15.safetensors"
    shutil.copy(original, folder / "base.safetensors")
    shutil.copy(original, folder / "twin.safetensors")
    tensors = load_file(original)
    key = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    table = tensors[key]
    step = max(1, table.numel() // FINGERPRINT_SAMPLES)
    row = table.shape[0] // 2
    flat = table.reshape(-1).clone()
    unsampled = [i for i in range(row * table.shape[1], (row + 1) * table.shape[1]) if i % step]
    assert unsampled  # the sample skips part of the row
    flat[unsampled] += 0.5
    save_file({**tensors, key: flat.reshape(table.shape)}, folder / "patched.safetensors")
    precision = Precision.for_device("cpu")
    cache = PipelineCache(
        lambda name: load_pipeline(folder / f"{name}.safetensors", [demo_models / "configs"], precision),
        budget_bytes=None,
    )
    base, patched, twin = cache.get("base"), cache.get("patched"), cache.get("twin")
    assert fingerprint(patched.text_encoder) == fingerprint(base.text_encoder)  # the sample cannot tell
    assert patched.text_encoder is not base.text_encoder
    assert not torch.equal(
        patched.text_encoder.get_input_embeddings().weight, base.text_encoder.get_input_embeddings().weight
    )
    assert patched.unet is base.unet and patched.vae is base.vae  # what is equal is still shared
    assert all(
        getattr(twin, name) is module
        for name, module in base.components.items()
        if isinstance(module, torch.nn.Module)
    )
    assert cache.describe()["shared_components"] == len(
        [m for m in base.components.values() if isinstance(m, torch.nn.Module)]
    )
