"""Prompt encoding cost vs one UNet call, on the tiny demo models with the seed payloads' prompts.

    python bench/prompt_encoding.py [--runs 7] [--threads 1]

For each seed (000: SD1.5 with four textual-inversion embeddings in its negative prompt; 002: SDXL with
CLIP skip 2) the whole `build_conditioning` of one pass (negative + positive, A1111 chunking, emphasis,
textual inversion) is timed against one UNet forward of the same model at 64×64 on the cond and uncond
rows it produced. Embeddings are tiny files written to a temporary models folder, named as in the seed.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.demo.tiny import tiny_components  # noqa: E402
from engine.pipeline import A1111Pipeline  # noqa: E402
from engine.prompts import parse_prompt_attention  # noqa: E402
from engine.prompts.conditioning import build_conditioning  # noqa: E402
from engine.prompts.embeddings import EmbeddingDatabase  # noqa: E402
from engine.prompts.options import PassShape, prompt_options_from  # noqa: E402
from engine.resources.catalog import ModelCatalog  # noqa: E402


SEEDS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "seeds"
CASES = {"000_343685f6abe1ed79.txt": "sd15", "002_645e89f4f859427c.txt": "sdxl"}
# The seed negative prompt's embeddings and their vector counts.
EMBEDDINGS = {
    "ng_deepnegative_v1_75t": 75,
    "badhandv4": 6,
    "verybadimagenegative_v1.3": 2,
    "negative_hand-neg": 4,
}


def seed_payload(name: str) -> dict:
    text = (SEEDS / name).read_text()
    return json.loads(text.split("```json", 1)[1].split("```", 1)[0])["input"]["payload"]


def write_embeddings(root: Path, pipe) -> None:
    folder = root / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for name, count in EMBEDDINGS.items():
        if pipe.is_sdxl:
            vectors = {
                "clip_l": torch.randn(count, 32, generator=generator),
                "clip_g": torch.randn(count, 48, generator=generator),
            }
        else:
            vectors = {"string_to_param": {"*": torch.randn(count, 32, generator=generator)}}
        torch.save(vectors, folder / f"{name}.pt")


def median_ms(action, runs: int) -> float:
    action()  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


@torch.no_grad()
def measure(seed: str, family: str, runs: int) -> dict:
    components = tiny_components(family)
    pipe = A1111Pipeline(
        **{key: components.get(key) for key in A1111Pipeline._get_signature_keys(A1111Pipeline)[0]}
    )
    payload = seed_payload(seed)
    options = prompt_options_from(payload.get("override_settings") or {})
    with tempfile.TemporaryDirectory() as folder:
        write_embeddings(Path(folder) / "models", pipe)
        database = EmbeddingDatabase(ModelCatalog(Path(folder) / "models"))
        database.refresh()

        def encode():
            return build_conditioning(
                pipe,
                [payload["prompt"]],
                [payload["negative_prompt"]],
                PassShape(64, 64, payload["steps"], second_order=True),
                options,
                parse_prompt_attention,
                embeddings=database,
            )

        encode_ms = median_ms(encode, runs)
        step = encode()(0)
    latents, t = torch.randn(1, 4, 8, 8), torch.tensor(500.0)
    added = step.cond_added

    def unet_call():
        pipe.unet(latents, t, encoder_hidden_states=step.cond, added_cond_kwargs=added, return_dict=False)

    unet_ms = median_ms(unet_call, runs)
    return {
        "seed": seed,
        "family": family,
        "cond_tokens": step.cond.shape[1],
        "uncond_tokens": step.uncond.shape[1],
        "encode_ms": encode_ms,
        "unet_ms": unet_ms,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (tiny models: 1 is fastest)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.runs} runs")
    for seed, family in CASES.items():
        row = measure(seed, family, args.runs)
        print(
            f"{row['family']:5} seed {row['seed'][:3]}: encode {row['encode_ms']:7.1f} ms "
            f"(cond {row['cond_tokens']} tokens, uncond {row['uncond_tokens']}), "
            f"one UNet call {row['unet_ms']:6.1f} ms, ratio encode/UNet = {row['encode_ms'] / row['unet_ms']:.2f}"
        )


if __name__ == "__main__":
    main()
