"""Fetch the default models, architecture configs and tokenizers into an A1111-layout models folder.

Run at image build time (see the Dockerfile) or once on a pod to fill a network volume:

    python download_models.py                      # the default set into $MODELS_DIR or ./models
    python download_models.py --list               # the manifest, with sizes and what is present
    python download_models.py --only sdxl,instantid --models /runpod-volume/models

Each file is downloaded into `<models>/.downloads/` and renamed into place only once its size and sha256
(where known) check out, so a file at its destination is always complete. The worker never downloads.
Most files come from the Hugging Face Hub; the face restoration weights come from the GitHub releases A1111
downloads them from (`--only face-restoration`; CodeFormer's weights are for non-commercial use only).
ReActor's swap model and insightface's buffalo_l pack (`--only reactor`, unpacked from insightface's zip) are
likewise for non-commercial research only; the same group fetches facexlib's BiSeNet face parser (MIT) for its
face mask correction.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


SCRIPT_DIR = Path(__file__).resolve().parent
STAGING_DIR = ".downloads"
# `python -m engine demo-models` lists the random-weight files it wrote here (engine/demo/models.py):
# such a file is never taken for the real one, whatever its name.
DEMO_MARKER = ".demo-files.json"
HASH_CHUNK_BYTES = 8 * 1024 * 1024
# The sha256 list of fetched files that run code when loaded (ultralytics' pickled detectors), which the
# worker's TRUSTED_PICKLES=1 reads (engine/resources/trusted_pickles.py).
TRUSTED_PICKLES_FILE = "trusted_pickles.sha256"
PICKLE_KINDS = ("detector",)

# The maintained copy of runwayml/stable-diffusion-v1-5 (taken down in 2024), same files.
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_REFINER_REPO = "stabilityai/stable-diffusion-xl-refiner-1.0"
ADETAILER_REPO = "Bingsu/adetailer"
ADETAILER_REVISION = "53cc19de382014514d9d4038601d261a7faa9b7b"  # the pickles re-saved without dill (2024-11)
# The five ONNX files of insightface's antelopev2 pack, loose (insightface's own zip nests them one folder too
# deep); the same source sd-webui-controlnet's `install_antelopev2` downloads from.
ANTELOPE_REPO = "DIAMONIK7777/antelopev2"
ANTELOPE_REVISION = "ba0c3e10f4548361eb9a63265d87ce1140ab5a05"
ANTELOPE_DIR = "insightface/models/antelopev2"
INSTANTID_REPO = "InstantX/InstantID"
# IP-Adapter (Apache-2.0) and its FaceID models (non-commercial: trained on insightface's embeddings), saved
# under the names sd-webui-controlnet's presets know them by (ip-adapter-auto picks the module by name).
IP_ADAPTER_REPO = "h94/IP-Adapter"
IP_ADAPTER_FACEID_REPO = "h94/IP-Adapter-FaceID"
# RealESRGAN_x4plus.pth from xinntao's GitHub release v0.1.0, mirrored on the Hub.
UPSCALER_REPO = "lllyasviel/Annotators"
# Face restoration: the release files A1111 v1.10 downloads on first use (`codeformer_model.py`,
# `gfpgan_model.py`, and facexlib's detection/parsing URLs, saved in models/GFPGAN by `patch_facexlib`).
GITHUB_RELEASES = "https://github.com/{repo}/releases/download/{tag}/{file}"
FACE_RESTORATION_GROUPS = ("face-restoration", "codeformer", "gfpgan")
# ReActor: the swap model from the Hub dataset its install.py downloads from, and the buffalo_l pack from the
# insightface release that `FaceAnalysis(name="buffalo_l")` fetches (ReActor lets insightface download it).
REACTOR_REPO = "Gourieff/ReActor"
BUFFALO_L_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
BUFFALO_L_FILES = ("det_10g.onnx", "w600k_r50.onnx", "genderage.onnx", "1k3d68.onnx", "2d106det.onnx")
URL_CHUNK_BYTES = 1024 * 1024

# What `StableDiffusionPipeline.from_single_file(path, config=<folder>, local_files_only=True)` reads from a
# diffusers pipeline folder: model_index.json, every model's config.json, the scheduler config and the CLIP
# tokenizer files. The safety checker and feature extractor are not loaded (the loader passes None).
TOKENIZER_FILES = ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")
SD15_CONFIG_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    *(f"tokenizer/{name}" for name in TOKENIZER_FILES),
    "unet/config.json",
    "vae/config.json",
)
SDXL_CONFIG_FILES = (
    *SD15_CONFIG_FILES,
    "text_encoder_2/config.json",
    *(f"tokenizer_2/{name}" for name in TOKENIZER_FILES),
)
# The refiner's folder (`StableDiffusionXLImg2ImgPipeline`) has no CLIP-L: OpenCLIP-G alone.
SDXL_REFINER_CONFIG_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder_2/config.json",
    *(f"tokenizer_2/{name}" for name in TOKENIZER_FILES),
    "unet/config.json",
    "vae/config.json",
)


class DownloadError(Exception):
    """A download that cannot complete; its str() is one line for the console."""


@dataclass(frozen=True)
class Item:
    """One file: where it comes from on the Hub and where it goes under the models folder."""

    name: str
    kind: str
    repo_id: str
    filename: str  # path inside the repo
    dest: str  # path relative to the models folder, in A1111's layout
    size: int | None = None  # bytes, when known
    sha256: str | None = None  # when known; checked before the file is put in place
    default: bool = True
    groups: tuple[str, ...] = ()
    revision: str | None = None  # a commit, for files whose bytes changed upstream; None = main
    repo_type: str | None = None  # "space" for a file in a Space; None = a model repository
    url: str | None = None  # a direct download (a GitHub release asset) instead of the Hub; repo_id names its repo
    # A zip archive: these members (matched by file name, wherever the zip puts them) are unpacked into the
    # folder `dest`, and the archive is not kept.
    unpack: tuple[str, ...] = ()


def _release_item(name: str, repo: str, tag: str, file: str, dest: str, size: int, sha256: str,
                  groups: tuple[str, ...]) -> Item:
    url = GITHUB_RELEASES.format(repo=repo, tag=tag, file=file)
    return Item(name, "face-restoration", repo, file, dest, size, sha256, default=False, groups=groups, url=url)


def _config_items(family: str, repo_id: str, files: Iterable[str], default: bool = True) -> list[Item]:
    return [
        Item(f"{family}-config/{path}", "config", repo_id, path, f"configs/{family}/{path}", default=default,
             groups=(family, f"{family}-config", "configs"))
        for path in files
    ]


MANIFEST: tuple[Item, ...] = (
    Item("sd15-checkpoint", "checkpoint", SD15_REPO, "v1-5-pruned-emaonly.safetensors",
         "Stable-diffusion/v1-5-pruned-emaonly.safetensors", 4_265_146_304,
         "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa", groups=("sd15",)),
    *_config_items("sd15", SD15_REPO, SD15_CONFIG_FILES),
    Item("sdxl-checkpoint", "checkpoint", SDXL_REPO, "sd_xl_base_1.0.safetensors",
         "Stable-diffusion/sd_xl_base_1.0.safetensors", 6_938_078_334,
         "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b", groups=("sdxl",)),
    *_config_items("sdxl", SDXL_REPO, SDXL_CONFIG_FILES),
    # The SDXL refiner (refiner_checkpoint), on request: --only sdxl_refiner.
    Item("sdxl_refiner-checkpoint", "checkpoint", SDXL_REFINER_REPO, "sd_xl_refiner_1.0.safetensors",
         "Stable-diffusion/sd_xl_refiner_1.0.safetensors", 6_075_981_930,
         "7440042bbdc8a24813002c09b6b69b64dc90fded4472613437b7f55f9b7d9c5f", default=False,
         groups=("sdxl_refiner",)),
    *_config_items("sdxl_refiner", SDXL_REFINER_REPO, SDXL_REFINER_CONFIG_FILES, default=False),
    Item("face_yolov8n", "detector", ADETAILER_REPO, "face_yolov8n.pt", "adetailer/face_yolov8n.pt",
         6_230_011,
         "70b640f8f60b1cf0dcc72f30caf3da9495eb2fb6509da48c53374ad6806e6a9c", groups=("adetailer",),
         revision=ADETAILER_REVISION),
    Item("RealESRGAN_x4plus", "upscaler", UPSCALER_REPO, "RealESRGAN_x4plus.pth",
         "RealESRGAN/RealESRGAN_x4plus.pth", 67_040_989,
         "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1", groups=("upscalers",)),
    # InstantID needs only the detector (face box + 5 keypoints) and the recogniser (the identity embedding).
    Item("antelopev2-detection", "insightface", ANTELOPE_REPO, "scrfd_10g_bnkps.onnx",
         f"{ANTELOPE_DIR}/scrfd_10g_bnkps.onnx", 16_923_827,
         "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
         groups=("antelopev2", "instantid"), revision=ANTELOPE_REVISION),
    Item("antelopev2-recognition", "insightface", ANTELOPE_REPO, "glintr100.onnx",
         f"{ANTELOPE_DIR}/glintr100.onnx", None,
         "4ab1d6435d639628a6f3e5008dd4f929edf4c4124b1a7169e1048f9fef534cdf",
         groups=("antelopev2", "instantid"), revision=ANTELOPE_REVISION),
    *(Item(f"antelopev2-{task}", "insightface", ANTELOPE_REPO, file, f"{ANTELOPE_DIR}/{file}", default=False,
           groups=("antelopev2",), revision=ANTELOPE_REVISION)
      for task, file in (("landmark_3d_68", "1k3d68.onnx"), ("landmark_2d_106", "2d106det.onnx"),
                         ("genderage", "genderage.onnx"))),
    # sd-webui-controlnet recognises both InstantID models by "instant_id" in their file names: names matter.
    Item("instantid-ip-adapter", "ip-adapter", INSTANTID_REPO, "ip-adapter.bin",
         "ControlNet/ip-adapter_instant_id_sdxl.bin", 1_691_134_141,
         "02b3618e36d803784166660520098089a81388e61a93ef8002aa79a5b1c546e1", groups=("instantid",)),
    Item("instantid-controlnet", "controlnet", INSTANTID_REPO,
         "ControlNetModel/diffusion_pytorch_model.safetensors",
         "ControlNet/control_instant_id_sdxl.safetensors", 2_502_139_136,
         "c8127be9f174101ebdafee9964d856b49b634435cf6daa396d3f593cf0bbbb05", groups=("instantid",)),
    # The IdentityNet weights are in diffusers' key format, which `from_single_file` cannot read: building the
    # ControlNetModel offline needs its config.json.
    Item("instantid-controlnet-config", "config", INSTANTID_REPO, "ControlNetModel/config.json",
         "configs/instantid-controlnet/config.json", groups=("instantid", "configs")),
    # Not in the default set: about 0.9 GB, and CodeFormer's weights are licensed for non-commercial use only.
    _release_item("codeformer-v0.1.0", "sczhou/CodeFormer", "v0.1.0", "codeformer.pth",
                  "Codeformer/codeformer-v0.1.0.pth", 376_637_898,
                  "1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7", ("face-restoration", "codeformer")),
    _release_item("GFPGANv1.4", "TencentARC/GFPGAN", "v1.3.0", "GFPGANv1.4.pth", "GFPGAN/GFPGANv1.4.pth",
                  348_632_874, "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
                  ("face-restoration", "gfpgan")),
    # ReActor (not in the default set; insightface's models are for non-commercial research only).
    Item("inswapper_128", "insightface", REACTOR_REPO, "models/inswapper_128.onnx", "insightface/inswapper_128.onnx",
         default=False, groups=("reactor",), repo_type="dataset"),
    Item("buffalo_l", "insightface", "deepinsight/insightface", "buffalo_l.zip", "insightface/models/buffalo_l",
         default=False, groups=("reactor", "ip-adapter-faceid"), url=BUFFALO_L_URL, unpack=BUFFALO_L_FILES),
    # ReActor's face mask correction: facexlib's BiSeNet (`init_parsing_model("bisenet")`), which A1111's
    # `patch_facexlib` saves in models/GFPGAN.
    Item("facexlib-bisenet", "face-restoration", "xinntao/facexlib", "parsing_bisenet.pth",
         "GFPGAN/parsing_bisenet.pth", 53_289_463, default=False, groups=("reactor",),
         url=GITHUB_RELEASES.format(repo="xinntao/facexlib", tag="v0.2.0", file="parsing_bisenet.pth")),
    # The face detector and parser both restorers need.
    _release_item("facexlib-detection", "xinntao/facexlib", "v0.1.0", "detection_Resnet50_Final.pth",
                  "GFPGAN/detection_Resnet50_Final.pth", 109_497_761,
                  "6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d", FACE_RESTORATION_GROUPS),
    _release_item("facexlib-parsing", "xinntao/facexlib", "v0.2.2", "parsing_parsenet.pth",
                  "GFPGAN/parsing_parsenet.pth", 85_331_193,
                  "3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2", FACE_RESTORATION_GROUPS),
)

# sd-webui-controlnet's annotator files (its `annotator/*` download URLs), in its folder layout under
# ControlNetAnnotators/ (see engine/control/maps/annotators.py). Not in the default set; `--only annotators`, or
# one annotator's group `annotator-<name>` (the name its "not found" error gives).
ANNOTATOR_REPO = "lllyasviel/Annotators"
ANIMAL_POSE_FILE = "rtmpose-m_simcc-ap10k_pt-aic-coco_210e-256x256-7a041aa1_20230206.onnx"
# OneFormer as SHI-Labs' transformers folders (sd-webui-controlnet's detectron2 .pth has no loader here): the
# model, its config and the CLIP tokenizer, not the repositories' copy of the .pth.
ONEFORMER_FILES = ("config.json", "pytorch_model.bin", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
ANNOTATOR_FILES: dict[str, tuple[str, tuple[str, ...]]] = {  # annotator → (folder, files)
    "hed": ("hed", ("ControlNetHED.pth",)), "pidinet": ("pidinet", ("table5_pidinet.pth",)),
    "mlsd": ("mlsd", ("mlsd_large_512_fp32.pth",)), "lineart": ("lineart", ("sk_model.pth", "sk_model2.pth")),
    "lineart_anime": ("lineart_anime", ("netG.pth",)),
    "openpose": ("openpose", ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")),
    "midas": ("midas", ("dpt_hybrid-midas-501f0c75.pt",)), "zoedepth": ("zoedepth", ("ZoeD_M12_N.pt",)),
    "leres": ("leres", ("res101.pth", "latest_net_G.pth")), "normal_bae": ("normal_bae", ("scannet.pt",)),
    "lama": ("lama", ("ControlNetLama.pth",)),
    "depth_anything": ("depth_anything", ("depth_anything_vitl14.pth",)),
    "depth_anything_v2": ("depth_anything_v2", ("depth_anything_v2_vitl.safetensors",)),
    "dwpose": ("openpose", ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")),
    "animal_pose": ("openpose", ("yolox_l.onnx", ANIMAL_POSE_FILE)),
    "anime_face_segment": ("anime_face_segment", ("UNet.pth",)),
    "mobile_sam": ("mobile_sam", ("mobile_sam.pt",)),
    "clip_h": ("clip_vision", ("clip_h.pth",)), "clip_g": ("clip_vision", ("clip_g.pth",)),
    "oneformer_ade20k": ("oneformer/oneformer_ade20k_swin_large", ONEFORMER_FILES),
    "oneformer_coco": ("oneformer/oneformer_coco_swin_large", ONEFORMER_FILES),
}
# Files that are not in lllyasviel/Annotators: file → (repo, path in the repo, repo type), where
# sd-webui-controlnet downloads them from.
ANNOTATOR_SOURCES: dict[str, tuple[str, str, str | None]] = {
    "depth_anything_vitl14.pth": ("LiheYoung/Depth-Anything", "checkpoints/depth_anything_vitl14.pth", "space"),
    "depth_anything_v2_vitl.safetensors": ("MackinationsAi/Depth-Anything-V2_Safetensors",
                                           "depth_anything_v2_vitl.safetensors", None),
    "yolox_l.onnx": ("yzd-v/DWPose", "yolox_l.onnx", None),
    "dw-ll_ucoco_384.onnx": ("yzd-v/DWPose", "dw-ll_ucoco_384.onnx", None),
    ANIMAL_POSE_FILE: ("bdsqlsz/qinglong_controlnet-lllite", f"Annotators/{ANIMAL_POSE_FILE}", None),
    "UNet.pth": ("bdsqlsz/qinglong_controlnet-lllite", "Annotators/UNet.pth", None),
    "mobile_sam.pt": ("dhkim2810/MobileSAM", "mobile_sam.pt", None),
    # IP-Adapter's own image encoder (OpenCLIP ViT-H/14), which sd-webui-controlnet saves as clip_h.pth.
    "clip_h.pth": ("h94/IP-Adapter", "models/image_encoder/pytorch_model.bin", None),
}

# Folders whose files all come from one Hub repository, at the same paths.
ANNOTATOR_FOLDER_REPOS: dict[str, str] = {
    "oneformer/oneformer_ade20k_swin_large": "shi-labs/oneformer_ade20k_swin_large",
    "oneformer/oneformer_coco_swin_large": "shi-labs/oneformer_coco_swin_large",
}


# Annotator files other groups need too: the IP-Adapter modules' CLIP vision encoders.
ANNOTATOR_EXTRA_GROUPS: dict[str, tuple[str, ...]] = {
    "clip_h.pth": ("ip-adapter", "ip-adapter-sd15", "ip-adapter-sdxl", "ip-adapter-faceid"),
    "clip_g.pth": ("ip-adapter", "ip-adapter-sdxl"),
}


def _annotator_items() -> tuple[Item, ...]:
    """One item per file (a file two annotators share, such as DWPose's detector, is in both groups)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name, (folder, files) in ANNOTATOR_FILES.items():
        for file in files:
            groups.setdefault((folder, file), []).append(f"annotator-{name}")
    items = []
    for (folder, file), names in groups.items():
        if folder in ANNOTATOR_FOLDER_REPOS:
            repo_id, path, repo_type = ANNOTATOR_FOLDER_REPOS[folder], file, None
        else:
            repo_id, path, repo_type = ANNOTATOR_SOURCES.get(file, (ANNOTATOR_REPO, file, None))
        items.append(Item(f"annotator-{folder}/{file}", "annotator", repo_id, path,
                          f"ControlNetAnnotators/{folder}/{file}", default=False,
                          groups=("annotators", *names, *ANNOTATOR_EXTRA_GROUPS.get(file, ())),
                          repo_type=repo_type))
    return tuple(items)


ANNOTATORS = _annotator_items()
# ControlNet 1.1 for SD1.5 as fp16 safetensors (the same weights as lllyasviel's .pth files), the config the
# loader builds them with, an SD1.5 T2I-Adapter, and xinsir's SDXL union ControlNet (ProMax) with its config.
CONTROLNET_11_REPO = "comfyanonymous/ControlNet-v1-1_fp16_safetensors"
CONTROLNET_11 = ("control_v11p_sd15_canny", "control_v11f1p_sd15_depth", "control_v11p_sd15_openpose",
                 "control_v11p_sd15_lineart", "control_v11p_sd15_softedge", "control_v11p_sd15_scribble",
                 "control_v11p_sd15_inpaint", "control_v11f1e_sd15_tile", "control_v11e_sd15_shuffle",
                 "control_v11p_sd15_mlsd", "control_v11p_sd15_normalbae")
CONTROLNETS = (
    *(Item(f"{name}", "controlnet", CONTROLNET_11_REPO, f"{name}_fp16.safetensors",
           f"ControlNet/{name}_fp16.safetensors", default=False, groups=("controlnet-sd15",))
      for name in CONTROLNET_11),
    Item("controlnet-sd15-config", "config", "lllyasviel/control_v11p_sd15_canny", "config.json",
         "configs/controlnet-sd15/config.json", default=False, groups=("controlnet-sd15", "configs")),
    Item("t2iadapter_depth_sd15v2", "controlnet", "TencentARC/T2I-Adapter", "models/t2iadapter_depth_sd15v2.pth",
         "ControlNet/t2iadapter_depth_sd15v2.pth", default=False, groups=("t2i-adapter",)),
    Item("controlnet-union-sdxl-promax", "controlnet", "xinsir/controlnet-union-sdxl-1.0",
         "diffusion_pytorch_model_promax.safetensors", "ControlNet/controlnet-union-sdxl-promax.safetensors",
         default=False, groups=("controlnet-union",)),
    Item("controlnet-union-sdxl-config", "config", "xinsir/controlnet-union-sdxl-1.0", "config_promax.json",
         "configs/controlnet-union-sdxl/config.json", default=False, groups=("controlnet-union", "configs")),
)
IP_ADAPTERS = (
    *(Item(name, "ip-adapter", IP_ADAPTER_REPO, f"{folder}/{name}.safetensors", f"ControlNet/{name}.safetensors",
           default=False, groups=("ip-adapter", f"ip-adapter-{family}"))
      for folder, family, name in (
          ("models", "sd15", "ip-adapter_sd15"), ("models", "sd15", "ip-adapter-plus_sd15"),
          ("models", "sd15", "ip-adapter-plus-face_sd15"), ("models", "sd15", "ip-adapter-full-face_sd15"),
          ("sdxl_models", "sdxl", "ip-adapter_sdxl_vit-h"), ("sdxl_models", "sdxl", "ip-adapter-plus_sdxl_vit-h"),
          ("sdxl_models", "sdxl", "ip-adapter-plus-face_sdxl_vit-h"), ("sdxl_models", "sdxl", "ip-adapter_sdxl"))),
    # FaceID needs its LoRA in the prompt, as sd-webui-controlnet's presets say (`<lora:ip-adapter-faceid…>`).
    *(Item(name, kind, IP_ADAPTER_FACEID_REPO, f"{name}{suffix}", f"{folder}/{name}{suffix}", default=False,
           groups=("ip-adapter-faceid",))
      for name, kind, suffix, folder in (
          ("ip-adapter-faceid_sd15", "ip-adapter", ".bin", "ControlNet"),
          ("ip-adapter-faceid_sd15_lora", "lora", ".safetensors", "Lora"),
          ("ip-adapter-faceid-plusv2_sd15", "ip-adapter", ".bin", "ControlNet"),
          ("ip-adapter-faceid-plusv2_sd15_lora", "lora", ".safetensors", "Lora"))),
)
# ADetailer's mediapipe models (Apache-2.0), which the worker reads from models/mediapipe/: the two BlazeFace
# detectors mediapipe's wheels bundle (pinned to the generation and sha256 mediapipe's own build lists in
# third_party/external_files.bzl) and Google's face landmarker task for the two face-mesh models.
MEDIAPIPE_ASSETS = "https://storage.googleapis.com/mediapipe-assets/modules/face_detection/{file}?generation={generation}"
MEDIAPIPE_LANDMARKER_URL = ("https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/"
                            "float16/1/face_landmarker.task")
MEDIAPIPE = (
    *(Item(f"mediapipe-{name}", "mediapipe", "google-ai-edge/mediapipe", file, f"mediapipe/{file}", None, sha256,
           default=False, groups=("mediapipe", "adetailer-mediapipe"),
           url=MEDIAPIPE_ASSETS.format(file=file, generation=generation))
      for name, file, generation, sha256 in (
          ("face-short", "face_detection_short_range.tflite", "1782183508198291",
           "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"),
          ("face-full", "face_detection_full_range_sparse.tflite", "1782183500697062",
           "671dd2f9ed11a78436fc21cc42357a803dfc6f73e9fb86541be942d5716c2dce"))),
    Item("mediapipe-face-landmarker", "mediapipe", "google-ai-edge/mediapipe", "face_landmarker.task",
         "mediapipe/face_landmarker.task", default=False, groups=("mediapipe", "adetailer-mediapipe"),
         url=MEDIAPIPE_LANDMARKER_URL),
)
MANIFEST = (*MANIFEST, *ANNOTATORS, *CONTROLNETS, *IP_ADAPTERS, *MEDIAPIPE)

Fetch = Callable[[Item, Path], Path]
# Selectors that are not item or group names.
KEYWORDS: dict[str, Callable[[Item], bool]] = {
    "default": lambda item: item.default,
    "all": lambda item: True,
    "none": lambda item: False,
}


def fetch(item: Item, staging: Path) -> Path:
    """The only network access: download `item` into `staging` (from its URL, else the Hub)."""
    return fetch_from_url(item, staging) if item.url else fetch_from_hub(item, staging)


def fetch_from_url(item: Item, staging: Path) -> Path:
    """Download `item.url` into `staging`, continuing a partial file when the server honours a Range request."""
    path = staging / item.filename
    done = path.stat().st_size if path.exists() else 0
    if done and done == item.size:
        return path  # complete from an earlier run; `verify` checks it
    request = urllib.request.Request(item.url, headers={"Range": f"bytes={done}-"} if done else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        resumed = done and response.status == 206
        with path.open("ab" if resumed else "wb") as handle:
            while chunk := response.read(URL_CHUNK_BYTES):
                handle.write(chunk)
    return path


def fetch_from_hub(item: Item, staging: Path) -> Path:
    """Download `item` from the Hub into `staging` and return the downloaded file.

    huggingface_hub retries and resumes after transient errors, reads `HF_TOKEN`, and reuses a complete
    file already in `staging` (with its `.cache/huggingface` metadata) instead of downloading it again.
    """
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(item.repo_id, item.filename, revision=item.revision, repo_type=item.repo_type,
                           local_dir=staging, token=os.environ.get("HF_TOKEN") or None)
    return Path(path)


def status(item: Item, root: Path) -> str:
    """"present" (complete), "demo" (a random-weight demo file), "incomplete" (the wrong size or checksum)
    or "missing". A file whose size is not in the manifest is checked by its sha256, where that is known."""
    path = root / item.dest
    if item.unpack:
        members = [f"{item.dest}/{name}" for name in item.unpack]
        if not all((root / member).is_file() for member in members):
            return "missing"
        return "demo" if demo_files(root) & set(members) else "present"
    if not path.is_file():
        return "missing"
    if item.dest in demo_files(root):
        return "demo"
    if item.size is not None and path.stat().st_size != item.size:
        return "incomplete"
    if item.size is None and item.sha256 is not None and sha256_of(path) != item.sha256:
        return "incomplete"
    return "present"


def demo_files(root: Path) -> set[str]:
    """The demo files in the models folder, relative to it (empty when demo-models never wrote there)."""
    marker = root / DEMO_MARKER
    if not marker.is_file():
        return set()
    return set(json.loads(marker.read_text()))


def forget_demo_file(root: Path, dest: str) -> None:
    """A real file replaced the demo one at `dest`: it is no longer listed as a demo file."""
    remaining = demo_files(root) - {dest}
    if remaining:
        (root / DEMO_MARKER).write_text(json.dumps(sorted(remaining), indent=1))
    else:
        (root / DEMO_MARKER).unlink(missing_ok=True)


def select(items: Sequence[Item], only: str | None) -> list[Item]:
    """The items named by `only` ("a,b": item names, group names, or default/all/none), in manifest order."""
    tokens = ["default"] if only is None else [token.strip() for token in only.split(",") if token.strip()]
    if not tokens:
        raise DownloadError(f"--only needs at least one name; valid: {', '.join(valid_names(items))}")
    chosen: set[str] = set()
    unknown = []
    for token in tokens:
        if token in KEYWORDS:
            chosen.update(item.name for item in items if KEYWORDS[token](item))
            continue
        matches = {item.name for item in items if token == item.name or token in item.groups}
        if not matches:
            unknown.append(token)
        chosen |= matches
    if unknown:
        raise DownloadError(f"unknown name(s) {', '.join(unknown)}; valid: {', '.join(valid_names(items))}")
    return [item for item in items if item.name in chosen]


def valid_names(items: Sequence[Item]) -> list[str]:
    """Keywords, group names, then item names (config files are listed by their group, not one by one)."""
    groups = dict.fromkeys(group for item in items for group in item.groups)
    singles = [item.name for item in items if item.kind != "config" and item.name not in groups]
    return [*KEYWORDS, *groups, *singles]


def download(items: Sequence[Item], root: Path, fetch: Fetch = fetch) -> int:
    """Put every item that is not already complete in place; return how many were fetched.

    Raises:
        DownloadError: on the first item that cannot be fetched or fails its size or checksum check.
    """
    fetched = 0
    for number, item in enumerate(items, 1):
        prefix = f"[{number}/{len(items)}] {item.name}"
        state = status(item, root)
        if state == "present":
            print(f"{prefix}: present, skipped")
            continue
        print(f"{prefix}: {state}, fetching {item.repo_id}:{item.filename} ({format_size(item.size)})")
        install(item, root, fetch)
        fetched += 1
    # Everything is in place: the staging area holds only hub metadata now.
    shutil.rmtree(root / STAGING_DIR, ignore_errors=True)
    return fetched


def install(item: Item, root: Path, fetch: Fetch) -> Path:
    """Fetch one item into the staging area, check it, then rename it into place (atomic on a filesystem)."""
    staging = root / STAGING_DIR / item.repo_id.replace("/", "--")
    staging.mkdir(parents=True, exist_ok=True)
    try:
        staged = Path(fetch(item, staging))
    except Exception as exc:
        # The image sets HF_HUB_OFFLINE=1 for run time; running this script under it cannot work.
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0")
        hint = " (HF_HUB_OFFLINE is set)" if offline else ""
        raise DownloadError(
            f"{item.name}: cannot fetch {item.repo_id}:{item.filename}: {_one_line(exc)}{hint}"
        ) from exc
    try:
        verify(item, staged)
    except DownloadError:
        staged.unlink(missing_ok=True)  # never offer a bad file again, not even to a later run
        raise
    dest = root / item.dest
    if item.unpack:
        unpack(item, staged, dest)
        for name in item.unpack:
            forget_demo_file(root, f"{item.dest}/{name}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, dest)
    forget_demo_file(root, item.dest)
    return dest


def unpack(item: Item, archive: Path, folder: Path) -> None:
    """Put the members `item.unpack` names from the zip `archive` into `folder` (each renamed into place once
    written whole), then delete the archive.

    Raises:
        DownloadError: the archive lacks a member.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as bundle:
        members = {PurePosixPath(info.filename).name: info for info in bundle.infolist() if not info.is_dir()}
        missing = [name for name in item.unpack if name not in members]
        if missing:
            raise DownloadError(f"{item.name}: {item.filename} has no {', '.join(missing)}")
        for name in item.unpack:
            partial = folder / f".{name}.part"
            with bundle.open(members[name]) as source, partial.open("wb") as target:
                shutil.copyfileobj(source, target)
            os.replace(partial, folder / name)
    archive.unlink()


def verify(item: Item, path: Path) -> None:
    """Check the size and sha256 a downloaded file must have, where the manifest knows them."""
    size = path.stat().st_size
    if item.size is not None and size != item.size:
        raise DownloadError(f"{item.name}: {item.filename} has {size} bytes, expected {item.size}; discarded")
    if item.sha256 is None:
        return
    print(f"  checking sha256 of {item.filename}")
    digest = sha256_of(path)
    if digest != item.sha256:
        raise DownloadError(f"{item.name}: sha256 mismatch for {item.filename}: got {digest}, "
                            f"expected {item.sha256}; discarded")


def sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def format_size(size: int | None) -> str:
    """Decimal units, as the Hub shows them: 6938078334 -> "6.9 GB"; None -> "size unknown"."""
    if size is None:
        return "size unknown"
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def render_table(items: Sequence[Item], root: Path) -> str:
    """The manifest as a table: name, default set, size, status, source and destination."""
    header = ("NAME", "DEFAULT", "SIZE", "STATUS", "SOURCE -> DESTINATION")
    rows = [(item.name, "yes" if item.default else "", format_size(item.size) if item.size else "?",
             status(item, root), f"{item.repo_id}:{item.filename} -> {item.dest}") for item in items]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header) - 1)]
    lines = ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
             for row in (header, *rows)]
    known = sum(item.size or 0 for item in items)
    lines.append(f"models folder: {root}; {len(items)} files, {format_size(known)} of known sizes")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = Path(os.environ.get("MODELS_DIR") or SCRIPT_DIR / "models")
    parser.add_argument("--models", type=Path, default=default_root,
                        help="the models folder (default: $MODELS_DIR, else models/ beside this script)")
    parser.add_argument("--only", metavar="NAME[,NAME]",
                        help="items or groups to fetch; 'default' (the default), 'all' or 'none'")
    parser.add_argument("--list", action="store_true",
                        help="print the manifest and what is present; fetch nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, fetch: Fetch = fetch,
         manifest: Sequence[Item] = MANIFEST) -> int:
    """Command-line entry; returns the exit status (1 with a one-line error on stderr on failure)."""
    args = parse_args(argv)
    try:
        # --list alone shows the whole manifest; fetching alone takes the default set.
        items = select(manifest, "all" if args.list and args.only is None else args.only)
        if args.list:
            print(render_table(items, args.models))
            return 0
        fetched = download(items, args.models, fetch)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_trusted_pickles(manifest, args.models)
    print(f"done: {fetched} fetched, {len(items) - fetched} already present, in {args.models}")
    return 0


def write_trusted_pickles(manifest: Sequence[Item], root: Path) -> Path | None:
    """Add the manifest's sha256 of every pickled detector present in `root` to its trusted list (lines
    already there, an operator's own, are kept). Returns the list's path, None when there is nothing to list."""
    listed = root / TRUSTED_PICKLES_FILE
    lines = listed.read_text(encoding="utf-8").splitlines() if listed.is_file() else []
    known = {line.split()[0].lower() for line in lines if line.strip() and not line.startswith("#")}
    added = []
    for item in manifest:
        if item.kind in PICKLE_KINDS and item.sha256 and item.sha256 not in known and status(item, root) == "present":
            added.append(f"{item.sha256}  {item.dest}")
            known.add(item.sha256)
    if not added:
        return listed if lines else None
    lines += added
    listed.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return listed


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
