"""Textual inversion as A1111 does it: files from the embeddings folders, matched on token ids, inserted as vectors.

The reference: an embedding whose vectors are copies of some tokens' input embeddings must encode exactly
like those tokens written out ("badhandv4" holding the rows of "x y z" ≡ "x y z"), weights, chunk placement
and SDXL pooling included. Names and vector counts are those of the seed payloads' negative prompt.
"""

import hashlib
import pickle
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.demo.tiny import tiny_components
from engine.pipeline import A1111Pipeline
from engine.prompts import parse_prompt_attention
from engine.prompts.conditioning import build_conditioning
from engine.prompts.embeddings import EmbeddingDatabase
from engine.prompts.encode import PromptEncoder
from engine.prompts.options import PassShape, PromptOptions, prompt_options_from
from engine.resources.catalog import ModelCatalog
from engine.samplers import resolve_sampler
from engine.sampling.guidance import GuidedUNet
from engine.sampling.loop import denoise
from engine.sampling.noise import ImageNoise
from engine.sampling.schedulers import SamplerOptions, prepare_sampler
from tests.seeds import seed_payload


LETTERS = "abcdefghijklmnopqrstuvwxyz"
SEVENTY_FIVE_WORDS = " ".join(LETTERS[i % 26] for i in range(75))
# Embedding name -> (the text whose token vectors it holds, where the file goes, format).
EMBEDDINGS = {
    "ng_deepnegative_v1_75t": (SEVENTY_FIVE_WORDS, "../embeddings/ng_deepnegative_v1_75t.pt", "pt"),
    "badhandv4": ("x y z", "../embeddings/badhandv4.pt", "pt"),
    "verybadimagenegative_v1.3": ("q r", "embeddings/verybadimagenegative_v1.3.safetensors", "concept"),
    "negative_hand-neg": ("m n o p", "../embeddings/hands/negative_hand-neg.pt", "pt"),
    "bad": ("k", "../embeddings/bad.bin", "pt"),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine two threads cost 100x per op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_pipe(family: str) -> A1111Pipeline:
    components = tiny_components(family, seed=0)
    return A1111Pipeline(
        **{key: components.get(key) for key in A1111Pipeline._get_signature_keys(A1111Pipeline)[0]}
    )


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def token_rows(pipe, text: str, encoder: str = "text_encoder") -> torch.Tensor:
    tokenizer = pipe.tokenizer_2 if encoder == "text_encoder_2" else pipe.tokenizer
    return getattr(pipe, encoder).get_input_embeddings().weight[ids(tokenizer, text)].detach().clone()


def write_embedding(path: Path, vectors, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "pt":  # A1111's own training output: a pickled dict around a Parameter
        torch.save(
            {
                "string_to_token": {"*": 265},
                "string_to_param": {"*": torch.nn.Parameter(vectors)},
                "name": path.stem,
                "step": 1000,
                "sd_checkpoint": None,
                "sd_checkpoint_name": None,
            },
            path,
        )
    elif kind == "concept":  # diffusers' "learned_embeds" shape: one named tensor
        save_file({"emb_params": vectors}, path)
    else:  # SDXL: one tensor per text encoder
        save_file(vectors, path)
    return path


def write_library(root: Path, pipe) -> dict[str, Path]:
    """The seed negative prompt's embeddings for `pipe` (SDXL files for SDXL), plus one of the other family."""
    written = {}
    for name, (text, relative, kind) in EMBEDDINGS.items():
        if pipe.is_sdxl:
            vectors = {"clip_l": token_rows(pipe, text), "clip_g": token_rows(pipe, text, "text_encoder_2")}
            relative, kind = relative.rsplit(".", 1)[0] + ".safetensors", "sdxl"
        else:
            vectors = token_rows(pipe, text)
        written[name] = write_embedding(root / relative, vectors, kind)
    if pipe.is_sdxl:
        other = (root / "../embeddings/otherfamily.pt", torch.zeros(2, 32), "pt")
    else:
        other = (
            root / "../embeddings/otherfamily.safetensors",
            {"clip_l": torch.zeros(2, 32), "clip_g": torch.zeros(2, 48)},
            "sdxl",
        )
    written["otherfamily"] = write_embedding(*other)
    return written


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def setup(request, tmp_path_factory):
    pipe = make_pipe(request.param)
    root = tmp_path_factory.mktemp(request.param) / "models"
    root.mkdir()
    files = write_library(root, pipe)
    return pipe, EmbeddingDatabase(ModelCatalog(root)), files


def encode(pipe, prompt: str, embeddings=None):
    encoder = PromptEncoder(
        pipe.prompt_encoder(parse_prompt_attention).slots, parse_prompt_attention, embeddings=embeddings
    )
    with torch.no_grad():
        return encoder.encode([prompt])


def spelled_out(prompt: str) -> str:
    for name in sorted(EMBEDDINGS, key=len, reverse=True):
        prompt = re.sub(re.escape(name), EMBEDDINGS[name][0], prompt, flags=re.IGNORECASE)
    return prompt


@pytest.mark.parametrize(
    "prompt",
    [
        "a, (badhandv4:1.2), c",
        "BadHandV4 d",  # CLIP lower-cases, so matching is case-insensitive
        "ng_deepnegative_v1_75t, badhandv4",  # 75 vectors fill the first chunk exactly
        "badhandv4 bad",  # the longest name starting with the same token wins
        "(verybadimagenegative_v1.3:0.8), negative_hand-neg",  # a safetensors file and one in a subfolder
    ],
)
def test_embedding_encodes_like_the_tokens_it_holds(setup, prompt):
    pipe, database, _ = setup
    got = encode(pipe, prompt, database)
    expected = encode(pipe, spelled_out(prompt))
    torch.testing.assert_close(got.embeds, expected.embeds)
    if pipe.is_sdxl:
        torch.testing.assert_close(got.pooled, expected.pooled)
    assert got.used_embeddings and all(got.used_embeddings)


def test_an_embedding_never_straddles_two_chunks(setup):
    pipe, database, _ = setup
    words73 = " ".join(LETTERS[i % 26] for i in range(73))
    got = encode(pipe, f"{words73} badhandv4", database)
    # Three vectors do not fit in the 2 places left: they start the next chunk, as after a BREAK.
    torch.testing.assert_close(got.embeds, encode(pipe, f"{words73} BREAK x y z").embeds)


def test_embedding_for_the_other_family_stays_plain_text_with_a_note(setup):
    pipe, database, _ = setup
    got = encode(pipe, "otherfamily a", database)
    torch.testing.assert_close(got.embeds, encode(pipe, "otherfamily a").embeds)
    assert "otherfamily" in got.skipped_embeddings
    conditioning = build_conditioning(
        pipe,
        ["otherfamily a"],
        [""],
        PassShape(64, 64, 2),
        PromptOptions(),
        parse_prompt_attention,
        embeddings=database,
    )
    (note,) = conditioning.notes
    assert "'otherfamily'" in note
    assert ("80" if pipe.is_sdxl else "32") in note


def sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_ti_hashes_follow_a1111s_encoding_order(setup):
    pipe, database, files = setup
    negative = (
        "ng_deepnegative_v1_75t, (badhandv4:1.2), verybadimagenegative_v1.3, negative_hand-neg, badhandv4"
    )
    with torch.no_grad():
        conditioning = build_conditioning(
            pipe,
            ["a, bad"],
            [negative],
            PassShape(64, 64, 2),
            PromptOptions(),
            parse_prompt_attention,
            embeddings=database,
        )
    # A1111 encodes the negative first, then the prompt, and each encoder call puts its embeddings in front.
    encoders = 2 if pipe.is_sdxl else 1
    negative_entries = [
        f"{name}: {sha12(files[name])}"
        for name in ["ng_deepnegative_v1_75t", "badhandv4", "verybadimagenegative_v1.3", "negative_hand-neg"]
    ]
    expected = [f"bad: {sha12(files['bad'])}"] * encoders + negative_entries * encoders
    assert conditioning.extra_generation_params["TI hashes"] == ", ".join(expected)


def test_new_files_are_picked_up_without_a_restart(tmp_path):
    pipe = make_pipe("sd15")
    root = tmp_path / "models"
    database = EmbeddingDatabase(ModelCatalog(root))
    assert "newcomer" not in encode(pipe, "newcomer", database).skipped_embeddings
    assert database.refresh() is False
    write_embedding(root / "embeddings" / "newcomer.pt", token_rows(pipe, "u v"), "pt")
    assert database.refresh() is True
    torch.testing.assert_close(encode(pipe, "newcomer", database).embeds, encode(pipe, "u v").embeds)


class _Trap:
    """Unpickling this would run code; `weights_only=True` must refuse it."""

    sprung = False

    def __reduce__(self):
        return (_spring, ())


def _spring():
    _Trap.sprung = True
    return {}


def test_pickles_are_loaded_with_weights_only(tmp_path):
    pipe = make_pipe("sd15")
    root = tmp_path / "models"
    (root / "embeddings").mkdir(parents=True)
    with open(root / "embeddings" / "trap.pt", "wb") as stream:
        pickle.dump({"string_to_param": {"*": _Trap()}}, stream)
    write_embedding(root / "embeddings" / "fine.pt", token_rows(pipe, "u"), "pt")
    database = EmbeddingDatabase(ModelCatalog(root))
    got = encode(pipe, "trap fine", database)
    assert _Trap.sprung is False
    assert "cannot be read safely" in got.skipped_embeddings["trap"]
    assert [item.name for item in got.used_embeddings[0]] == ["fine"]


# --- the seed payloads, end to end on the tiny models ---------------------------------------------------


@torch.no_grad()
def run_seed(pipe, payload: dict, database, steps: int = 3):
    """The generation recipe's prompt, guidance and sampling steps at 64×64 with the seed's own prompts,
    sampler and overrides (its extensions and hires fix are other modules' business)."""
    choice = resolve_sampler(payload["sampler_name"], payload.get("scheduler"))
    options = prompt_options_from(payload.get("override_settings") or {})
    noise = ImageNoise((4, 8, 8), [7], device="cpu")
    initial = noise.first()
    sampler = prepare_sampler(
        choice,
        steps_total=steps,
        steps_run=steps,
        scheduler_config=dict(pipe.scheduler.config),
        seeds=[7],
        generators=noise.generators,
        options=SamplerOptions(sdxl=pipe.is_sdxl),
        device="cpu",
    )
    shape = PassShape(64, 64, steps, choice.second_order)
    conditioning = build_conditioning(
        pipe,
        [payload["prompt"]],
        [payload["negative_prompt"]],
        shape,
        options,
        parse_prompt_attention,
        embeddings=database,
    )
    unet = GuidedUNet(pipe.unet, float(payload["cfg_scale"]), conditioning)
    latents = denoise(sampler, initial * sampler.start_sigma, unet)
    return pipe.decode_to_images(latents)[0], conditioning, unet, sampler


@pytest.mark.parametrize("seed", ["000_343685f6abe1ed79.txt", "002_645e89f4f859427c.txt"])
def test_seed_prompts_run_end_to_end(setup, seed):
    pipe, database, files = setup
    payload = seed_payload(seed)
    image, conditioning, unet, sampler = run_seed(pipe, payload, database)
    assert image.size == (64, 64)
    assert len(set(image.getdata())) > 1
    step = conditioning(0)
    if seed.startswith("000"):
        # ng_deepnegative_v1_75t's 75 vectors make the negative longer than the prompt: two UNet passes.
        assert step.uncond.shape[1] > step.cond.shape[1]
        assert unet.calls == 2 * sampler.model_calls
        for name in ["ng_deepnegative_v1_75t", "badhandv4", "verybadimagenegative_v1.3", "negative_hand-neg"]:
            assert f"{name}: {sha12(files[name])}" in conditioning.extra_generation_params["TI hashes"]
    else:
        assert "TI hashes" not in conditioning.extra_generation_params
    # The SDXL seed sets CLIP skip 2, which A1111 ignores on SDXL; on SD1.5 it changes the conditioning.
    if seed.startswith("002"):
        skipped = replace(prompt_options_from(payload["override_settings"]), clip_skip=1)
        plain = build_conditioning(
            pipe,
            [payload["prompt"]],
            [payload["negative_prompt"]],
            PassShape(64, 64, 3),
            skipped,
            parse_prompt_attention,
        )(0)
        assert torch.equal(plain.cond, step.cond) is pipe.is_sdxl
