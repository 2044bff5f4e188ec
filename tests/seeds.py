"""The two seed payloads of the project (copied into tests/fixtures/seeds), read as clients send them."""

import json
from pathlib import Path


SEEDS_DIR = Path(__file__).resolve().parent / "fixtures" / "seeds"


def seed_job(name: str) -> dict:
    """The RunPod job (`{"input": {...}}`) of a seed file."""
    text = (SEEDS_DIR / name).read_text()
    return json.loads(text.split("```json", 1)[1].split("```", 1)[0])


def seed_payload(name: str) -> dict:
    return seed_job(name)["input"]["payload"]
