#!/usr/bin/env bash
# The test command: install what the tests need from the repo's own files, then lint and run the tests.
# Extra arguments go to pytest (`bash tests/run.sh -k hires`, `bash tests/run.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."

pip_install() { python -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install -r requirements.txt -r requirements-dev.txt
# Installed without their dependency lists: insightface would add CPU onnxruntime beside onnxruntime-gpu,
# k-diffusion would add training extras (wandb, clean-fid...) that its sampler modules never import.
pip_install --no-deps -r requirements-nodeps.txt -r requirements-dev-nodeps.txt

ruff check .
python -m pytest -q "$@"
