"""Shared fixtures: tiny random-weight models written once per session in the real on-disk formats."""

import os
from pathlib import Path

import pytest


# Tests never reach the network: any hub lookup must fail loudly instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")



@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> Path:
    """A models folder in A1111's layout holding every tiny demo model."""
    import torch

    from engine.demo.models import write_demo_models

    torch.set_num_threads(min(2, torch.get_num_threads()))
    root = tmp_path_factory.mktemp("models")
    write_demo_models(root)
    return root


@pytest.fixture(scope="session")
def sd15_engine(demo_models):
    from engine import Engine

    return Engine.from_models_dir(demo_models, device="cpu", default_checkpoint="tiny-sd15")
