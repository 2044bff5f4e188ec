# syntax=docker/dockerfile:1
# The RunPod worker: answers A1111 API payloads in-process on diffusers.
#
#   docker build -t a1111-diffusers-worker .                       # bakes the default model set (~15 GB)
#   docker build --build-arg MODELS=none -t worker-slim .          # no weights: use a network volume
#   docker build --build-arg MODELS=sdxl,instantid,upscalers .     # names from `download_models.py --list`
#   docker build --secret id=HF_TOKEN,env=HF_TOKEN ...             # only for gated or private repos
#
# torch 2.14.1 from PyPI brings its own CUDA 13.0 user-space libraries as pip packages, so the base image only
# has to match the CUDA major version. CUDA 13.x needs an NVIDIA driver >= 580 on the host (on RunPod, allow
# only CUDA 13.0+ machines for the endpoint).
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Ubuntu 24.04 ships Python 3.12; the project pins 3.11, from the deadsnakes PPA.
# libgl1 and libglib2.0-0: opencv-python (used by insightface and ultralytics) links against them.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libgl1 libglib2.0-0 \
    && apt-get purge -y software-properties-common \
    && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app

# Dependencies first, so code changes do not reinstall them. insightface goes in with --no-deps: its own
# dependency list would add CPU `onnxruntime` beside `onnxruntime-gpu` (two distributions, one module).
COPY requirements.txt requirements-nodeps.txt ./
RUN pip install -r requirements.txt \
    && pip install --no-deps -r requirements-nodeps.txt

# Weights before code, so code changes do not download them again.
# MODELS: the names passed to `download_models.py --only` ("default", "none", or items and groups).
ARG MODELS=default
COPY download_models.py ./
RUN --mount=type=secret,id=HF_TOKEN,env=HF_TOKEN \
    python download_models.py --models /models --only "$MODELS"

COPY engine/ engine/
COPY handler.py ./

# Run time: the worker never reaches the network (configs and tokenizers are local under /models/configs).
# DEFAULT_CHECKPOINT: the SD1.5 checkpoint of the default set; give another name (or an empty one: the first
# checkpoint by name, as A1111 does) when MODELS leaves it out. With MODELS=none, also point MODELS_DIR at the
# network volume's models folder in the endpoint settings.
ARG DEFAULT_CHECKPOINT=v1-5-pruned-emaonly
ENV MODELS_DIR=/models \
    DEFAULT_CHECKPOINT=$DEFAULT_CHECKPOINT \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    YOLO_OFFLINE=1 \
    YOLO_AUTOINSTALL=false

CMD ["python", "-u", "handler.py"]
