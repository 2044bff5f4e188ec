"""`sd_vae`: A1111's VAE resolution; external VAE files loaded exactly, used without touching the pipeline."""

import hashlib
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.demo.tiny import write_tiny_checkpoint, write_tiny_vae
from engine.errors import NotFoundError, UnsupportedError
from engine.resources.catalog import ModelCatalog
from engine.resources.loader import Precision, load_pipeline
from engine.resources.vae import ExternalVaes, vae_infotext_fields
from engine.wire.info import ImageRecord, InfotextFields, infotext


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """tiny-sd15 (with a VAE named after it), a copy named `plain`, and two VAE files in A1111's layout."""
    root = tmp_path_factory.mktemp("vae-models")
    write_tiny_checkpoint("sd15", "tiny-sd15", root)
    checkpoints = root / "Stable-diffusion"
    shutil.copy(checkpoints / "tiny-sd15.safetensors", checkpoints / "plain.safetensors")
    written = {
        name: write_tiny_vae("sd15", root / "VAE" / name, seed=seed)
        for name, seed in (("tiny-sd15.vae.safetensors", 1), ("other.safetensors", 2))
    }
    return root, written


@pytest.fixture(scope="module")
def catalog(models):
    return ModelCatalog(models[0])


@pytest.fixture(scope="module")
def vaes(models, catalog):
    return ExternalVaes(catalog, [models[0] / "configs"], Precision.for_device("cpu"))


@pytest.fixture(scope="module")
def pipe(models):
    root = models[0]
    return load_pipeline(root / "Stable-diffusion" / "tiny-sd15.safetensors", [root / "configs"],
                         Precision.for_device("cpu"))


def state(module) -> dict[str, torch.Tensor]:
    return {key: tensor.clone() for key, tensor in module.state_dict().items()}


def same_weights(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize(("checkpoint", "setting", "expected"), [
    ("tiny-sd15", None, "tiny-sd15.vae.safetensors"),  # A1111's default "Automatic": the VAE named after it
    ("tiny-sd15", "Automatic", "tiny-sd15.vae.safetensors"),
    ("plain", "Automatic", None),  # no VAE named after it: the baked-in one
    ("tiny-sd15", "None", None),
    ("plain", "other.safetensors", "other.safetensors"),  # A1111's vae_dict key: the file name
    ("plain", "other", "other.safetensors"),
])
def test_sd_vae_resolves_as_a1111(vaes, catalog, checkpoint, setting, expected):
    found = vaes.resolve(setting, catalog.find_checkpoint(checkpoint))
    assert (found.name if found else None) == expected


def test_unknown_vae_is_an_error_listing_the_vaes(vaes, catalog):
    with pytest.raises(NotFoundError) as caught:
        vaes.resolve("missing.safetensors", catalog.find_checkpoint("tiny-sd15"))
    assert caught.value.field == "override_settings.sd_vae"
    assert "'other.safetensors'" in str(caught.value) and "'tiny-sd15.vae.safetensors'" in str(caught.value)


def test_external_vae_is_used_by_a_view_and_the_pipeline_is_untouched(models, vaes, catalog, pipe):
    checkpoint = catalog.find_checkpoint("tiny-sd15")
    baked_in, vae_object = state(pipe.vae), pipe.vae
    entry = vaes.resolve("other.safetensors", checkpoint)
    view = vaes.pipeline_for(pipe, entry, checkpoint)
    assert same_weights(state(view.vae), models[1]["other.safetensors"].state_dict())
    assert view.vae.config.scaling_factor == pipe.vae.config.scaling_factor  # the checkpoint's VAE config
    shared = ("unet", "text_encoder", "tokenizer", "scheduler")
    assert all(getattr(view, name) is getattr(pipe, name) for name in shared)
    assert view.vae_tiling is pipe.vae_tiling
    assert pipe.vae is vae_object and same_weights(state(pipe.vae), baked_in)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(view.decode_latents(latents), pipe.decode_latents(latents))
    # Loaded once: the next request reuses the resident VAE.
    assert vaes.pipeline_for(pipe, entry, checkpoint).vae is view.vae
    assert vaes.pipeline_for(pipe, None, checkpoint) is pipe


def test_vae_file_with_the_checkpoint_prefix_loads_too(models, vaes, catalog, pipe):
    """Some VAE files are a checkpoint's `first_stage_model.*` keys saved as is; diffusers takes both."""
    root, written = models
    plain_keys = load_file(root / "VAE" / "other.safetensors")
    save_file({f"first_stage_model.{key}": tensor for key, tensor in plain_keys.items()},
              root / "VAE" / "prefixed.safetensors")
    catalog.refresh("vae")
    checkpoint = catalog.find_checkpoint("tiny-sd15")
    view = vaes.pipeline_for(pipe, vaes.resolve("prefixed.safetensors", checkpoint), checkpoint)
    assert same_weights(state(view.vae), written["other.safetensors"].state_dict())


def test_infotext_names_and_hashes_only_external_vaes(models, vaes, catalog):
    entry = vaes.resolve("other", catalog.find_checkpoint("plain"))
    sha256 = hashlib.sha256((models[0] / "VAE" / "other.safetensors").read_bytes()).hexdigest()
    fields = vae_infotext_fields(entry)
    assert fields == {"vae_hash": sha256[:10], "vae_name": "other.safetensors"}
    request_fields = InfotextFields(20, "Euler", None, 7, 64, 64, "abc", "plain", **fields)
    text = infotext(request_fields, ImageRecord("a", "", 1, 1))
    assert "Model: plain, VAE hash: " + sha256[:10] + ", VAE: other.safetensors," in text
    assert vae_infotext_fields(None) == {"vae_hash": None, "vae_name": None}


def test_pickled_vae_files_are_refused_clearly(models, vaes, catalog, pipe):
    (models[0] / "VAE" / "old.pt").write_bytes(b"not loaded")
    catalog.refresh("vae")
    checkpoint = catalog.find_checkpoint("tiny-sd15")
    with pytest.raises(UnsupportedError, match="old.pt: only .safetensors"):
        vaes.pipeline_for(pipe, vaes.resolve("old.pt", checkpoint), checkpoint)


def test_sd_vae_override_through_the_engine(tmp_path):
    """override_settings.sd_vae picks a VAE file for one request; the infotext names it; unknown → error."""
    from engine import Engine
    from engine.demo.tiny import write_tiny_checkpoint, write_tiny_vae
    from engine.errors import NotFoundError

    write_tiny_checkpoint("sd15", "tiny-sd15", tmp_path)
    write_tiny_vae("sd15", tmp_path / "VAE" / "other.safetensors", seed=5)
    engine = Engine.from_models_dir(tmp_path, device="cpu")
    payload = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "seed": 3}
    plain = engine.txt2img(payload)
    other = engine.txt2img({**payload, "override_settings": {"sd_vae": "other.safetensors"}})
    assert plain.images[0].tobytes() != other.images[0].tobytes()
    assert "VAE: other.safetensors" in other.infotexts[0] and "VAE hash: " in other.infotexts[0]
    assert "VAE:" not in plain.infotexts[0]
    # The shared pipeline's own VAE is untouched: the plain request still gives the same pixels.
    assert engine.txt2img(payload).images[0].tobytes() == plain.images[0].tobytes()
    with pytest.raises(NotFoundError, match="other.safetensors"):
        engine.txt2img({**payload, "override_settings": {"sd_vae": "missing.safetensors"}})
