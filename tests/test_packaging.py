"""The project installs as a package: `engine` and the `a1111-worker` command work from any folder."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parent.parent
# What a source distribution of the project holds (the RunPod files stay out of the package).
SOURCES = ("engine", "pyproject.toml", "README.md", "LICENSE", "requirements.txt")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project installed (without dependencies, which this environment has) into a folder of its own,
    built from a copy so that the build leaves nothing in the repository."""
    source, target = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site")
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (REPO / name).is_dir() else {}))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
               "--disable-pip-version-check", "--target", str(target), str(source)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return target


def run_elsewhere(command: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("MODELS_DIR", None)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_command_and_module_work_outside_the_repo(installed, tmp_path):
    script = installed / "bin" / "a1111-worker"
    assert script.is_file()
    done = run_elsewhere([sys.executable, str(script), "--help"], installed, tmp_path)
    assert done.returncode == 0 and "generate" in done.stdout and "demo-models" in done.stdout
    done = run_elsewhere([sys.executable, "-m", "engine", "--help"], installed, tmp_path)
    assert done.returncode == 0 and "serve" in done.stdout


def test_an_installed_package_uses_the_current_folders_models(installed, tmp_path):
    probe = "import engine, engine.settings as s; print(engine.__file__); print(s.Settings.from_env().models_dir)"
    done = run_elsewhere([sys.executable, "-c", probe], installed, tmp_path)
    assert done.returncode == 0, done.stderr
    module_file, models_dir = done.stdout.split()
    assert Path(module_file).is_relative_to(installed)  # not the repo's copy
    assert Path(models_dir) == tmp_path / "models"
    assert not (installed / "handler.py").exists()  # the RunPod entry stays in the repo and the image
