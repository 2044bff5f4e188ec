"""Random-weight annotator files in their real formats and sd-webui-controlnet's folder layout.

Most annotators are fixed architectures (their loaders build the network with hard-coded widths), so "tiny" is not
possible: these are the real networks with random weights. The small ones (HED, PiDiNet, M-LSD, lineart, MobileSAM's
vit_t) are part of the demo models; the large ones (OpenPose, MiDaS, NormalBAE, anime lineart, LaMa: 200–500 MB
each) are written only on request (`python -m engine demo-models --annotators all`, and the slow tests). Depth
Anything's loader reads the architecture from the checkpoint, and DWPose's are ONNX graphs: those are tiny, in the
original key layout and the real input/output shapes. OneFormer's are transformers folders: a tiny `OneFormerConfig`
(small Swin, few layers, the real 150 / 133 classes) with the project's tiny CLIP tokenizer.
"""

import functools
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from engine.control.maps.annotators import ANNOTATORS, DOWNLOAD_FOLDER, quiet_import
from engine.demo.files import written_atomically


logger = logging.getLogger(__name__)


def _hed() -> dict:
    # The published ControlNetHED.pth is fp16; controlnet_aux loads it into its fp32 network.
    network = quiet_import("controlnet_aux.hed").ControlNetHED_Apache2()
    return {"ControlNetHED.pth": {key: value.half() for key, value in network.state_dict().items()}}


def _pidinet() -> dict:
    network = quiet_import("controlnet_aux.pidi.model").pidinet()
    # table5_pidinet.pth is a training checkpoint of a DataParallel model.
    return {"table5_pidinet.pth": {"state_dict": {f"module.{k}": v for k, v in network.state_dict().items()}}}


def _mlsd() -> dict:
    network = quiet_import("controlnet_aux.mlsd.models.mbv2_mlsd_large").MobileV2_MLSD_Large()
    return {"mlsd_large_512_fp32.pth": network.state_dict()}


def _lineart() -> dict:
    generator = quiet_import("controlnet_aux.lineart").Generator
    return {"sk_model.pth": generator(3, 1, 3).state_dict(), "sk_model2.pth": generator(3, 1, 3).state_dict()}


def _lineart_anime() -> dict:
    module = quiet_import("controlnet_aux.lineart_anime")
    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return {"netG.pth": module.UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False).state_dict()}


def _openpose() -> dict:
    body = quiet_import("controlnet_aux.open_pose.model")
    face = quiet_import("controlnet_aux.open_pose.face")
    # controlnet_aux's Body/Hand loaders rename the keys of the original Caffe-converted checkpoints back.
    return {"body_pose_model.pth": _openpose_keys(body.bodypose_model()),
            "hand_pose_model.pth": _openpose_keys(body.handpose_model()),
            "facenet.pth": face.FaceNet().state_dict()}


def _openpose_keys(network) -> dict:
    """The original pytorch-openpose checkpoints name layers without their block prefix (`conv1_1.weight`)."""
    return {".".join(key.split(".")[1:]): value for key, value in network.state_dict().items()}


def _midas() -> dict:
    module = quiet_import("controlnet_aux.midas.midas.dpt_depth")
    network = module.DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)
    return {"dpt_hybrid-midas-501f0c75.pt": network.state_dict()}


def _normal_bae() -> dict:
    import types

    # The arguments controlnet_aux's `NormalBaeDetector.from_pretrained` builds the network with.
    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                 importance_ratio=0.7)
    network = quiet_import("controlnet_aux.normalbae.nets.NNET").NNET(args)
    return {"scannet.pt": {"model": network.state_dict()}}


def _lama() -> dict:
    from spandrel.architectures.LaMa import LaMa

    network = LaMa(in_nc=4, out_nc=3)
    # ControlNetLama.pth is a Lightning checkpoint whose generator weights sit under `generator.model`.
    return {"ControlNetLama.pth": {"state_dict": {f"generator.{k.removeprefix('model.')}": v
                                                  for k, v in network.state_dict().items()}}}


# transformers key → the original Depth Anything key: the inverse of `depth_anything._RENAMES`.
_TO_ORIGINAL = (
    (r"backbone\.embeddings\.cls_token", "pretrained.cls_token"),
    (r"backbone\.embeddings\.mask_token", "pretrained.mask_token"),
    (r"backbone\.embeddings\.position_embeddings", "pretrained.pos_embed"),
    (r"backbone\.embeddings\.patch_embeddings\.projection\.", "pretrained.patch_embed.proj."),
    (r"backbone\.encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1", r"pretrained.blocks.\1.ls\2.gamma"),
    (r"backbone\.encoder\.layer\.(\d+)\.(norm\d|mlp\.fc\d)\.", r"pretrained.blocks.\1.\2."),
    (r"backbone\.encoder\.layer\.(\d+)\.attention\.o_proj\.", r"pretrained.blocks.\1.attn.proj."),
    (r"backbone\.layernorm\.", "pretrained.norm."),
    (r"neck\.reassemble_stage\.layers\.(\d)\.projection\.", r"depth_head.projects.\1."),
    (r"neck\.reassemble_stage\.layers\.(\d)\.resize\.", r"depth_head.resize_layers.\1."),
    (r"neck\.convs\.(\d)\.", lambda m: f"depth_head.scratch.layer{int(m[1]) + 1}_rn."),
    (r"neck\.fusion_stage\.layers\.(\d)\.projection\.", lambda m: f"depth_head.scratch.refinenet{4 - int(m[1])}.out_conv."),
    (r"neck\.fusion_stage\.layers\.(\d)\.residual_layer(\d)\.convolution(\d)\.",
     lambda m: f"depth_head.scratch.refinenet{4 - int(m[1])}.resConfUnit{m[2]}.conv{m[3]}."),
    (r"head\.conv1\.", "depth_head.scratch.output_conv1."),
    (r"head\.conv2\.", "depth_head.scratch.output_conv2.0."),
    (r"head\.conv3\.", "depth_head.scratch.output_conv2.2."),
)
_SPLIT_QKV = re.compile(r"backbone\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)")
# A tiny DINOv2 (12 blocks, as vits: V2 reads blocks 2, 5, 8, 11) and DPT head; one 64-wide attention head.
TINY_DEPTH_ANYTHING = {"hidden": 64, "blocks": 12, "fusion": 8, "neck": (8, 16, 24, 32)}


def to_original_depth_anything(converted: dict) -> dict:
    """A transformers Depth Anything state dict in the original checkpoint's keys (qkv merged)."""
    original, parts = {}, {}
    for key, value in converted.items():
        if match := _SPLIT_QKV.match(key):
            block, which, kind = match.groups()
            parts.setdefault((block, kind), {})[which] = value
            continue
        for pattern, replacement in _TO_ORIGINAL:
            renamed, count = re.subn(f"^{pattern}", replacement, key)
            if count:
                original[renamed] = value
                break
        else:
            raise KeyError(f"unexpected transformers Depth Anything key {key!r}")
    for (block, kind), qkv in parts.items():
        original[f"pretrained.blocks.{block}.attn.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return original


def tiny_depth_anything(version: int) -> dict:
    """A tiny random Depth Anything in the original key layout (built with transformers' classes)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    from engine.control.maps.depth_anything import PATCH, V2_LAYERS

    tiny = TINY_DEPTH_ANYTHING
    blocks = range(tiny["blocks"] - 4, tiny["blocks"]) if version == 1 else V2_LAYERS[tiny["blocks"]]
    backbone = Dinov2Config(hidden_size=tiny["hidden"], num_hidden_layers=tiny["blocks"], num_attention_heads=1,
                            patch_size=PATCH, image_size=518, out_indices=[b + 1 for b in blocks],
                            apply_layernorm=True, reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=tiny["hidden"], patch_size=PATCH,
                                 neck_hidden_sizes=list(tiny["neck"]), fusion_hidden_size=tiny["fusion"])
    model = DepthAnythingForDepthEstimation(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        model.head.conv3.bias.add_(1.0)  # else the last ReLU may clip every depth to 0 (a flat map)
    return to_original_depth_anything(model.state_dict())


def _depth_anything() -> dict:
    from engine.control.maps.annotators import DEPTH_ANYTHING_V1

    return {DEPTH_ANYTHING_V1: tiny_depth_anything(1)}


def _depth_anything_v2() -> dict:
    from engine.control.maps.annotators import DEPTH_ANYTHING_V2

    return {DEPTH_ANYTHING_V2: tiny_depth_anything(2)}


def _anime_face() -> dict:
    from engine.control.maps.anime_face import AnimeFaceUNet
    from engine.control.maps.annotators import ANIME_FACE

    return {ANIME_FACE: AnimeFaceUNet().state_dict()}


def _mobile_sam() -> dict:
    """vit_t with random weights, its mask decoder made confident (high predicted IoU, large-magnitude mask
    logits) so some masks pass the automatic generator's IoU and stability filters and the map is not black."""
    from engine.control.maps.annotators import MOBILE_SAM

    sam = quiet_import("controlnet_aux.segment_anything.build_sam").build_sam_vit_t()
    decoder = sam.mask_decoder
    with torch.no_grad():
        decoder.iou_prediction_head.layers[-1].bias.fill_(1.0)
        for hypernetwork in decoder.output_hypernetworks_mlps:
            hypernetwork.layers[-1].weight.mul_(50.0)
    return {MOBILE_SAM: sam.state_dict()}


def _dwpose() -> dict:
    from engine.control.maps import tiny_pose
    from engine.control.maps.annotators import DWPOSE_DETECTOR, DWPOSE_WHOLEBODY

    return {DWPOSE_DETECTOR: tiny_pose.tiny_detector(),
            DWPOSE_WHOLEBODY: tiny_pose.tiny_pose_model(tiny_pose.wholebody_layout(), tiny_pose.WHOLEBODY_INPUT)}


def _animal_pose() -> dict:
    from engine.control.maps import tiny_pose
    from engine.control.maps.annotators import ANIMAL_POSE, DWPOSE_DETECTOR

    return {DWPOSE_DETECTOR: tiny_pose.tiny_detector(),
            ANIMAL_POSE: tiny_pose.tiny_pose_model(tiny_pose.animal_layout(), tiny_pose.ANIMAL_INPUT)}


# Tiny CLIP vision towers in transformers' key layout (`clip_h.pth` / `clip_g.pth`): the loader reads every
# size from the weights and takes 16 heads from the family, so width 32 means heads of 2. Their projection
# widths differ so that an adapter paired with the wrong encoder is caught as with the real ones.
TINY_CLIP_PROJECTION = {"clip_h": 16, "clip_g": 24}


def _clip_vision(name: str) -> dict:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from engine.control.clip_vision import FAMILIES

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=16,
                              image_size=224, patch_size=14, projection_dim=TINY_CLIP_PROJECTION[name],
                              hidden_act=FAMILIES[name].activation, layer_norm_eps=1e-5)
    return {FAMILIES[name].file: CLIPVisionModelWithProjection(config).state_dict()}


# A tiny OneFormer: GroupNorm's 32 groups set the narrowest widths; the task MLP reads the real 77 task ids.
TINY_ONEFORMER = {"swin_width": 16, "width": 32, "queries": 8}


def tiny_oneformer(num_labels: int):
    """A tiny random `OneFormerForUniversalSegmentation` with the dataset's number of classes."""
    from transformers import OneFormerConfig, OneFormerForUniversalSegmentation, SwinConfig

    from engine.demo.tokenizer import clip_vocab

    tiny = TINY_ONEFORMER
    backbone = SwinConfig(embed_dim=tiny["swin_width"], depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    config = OneFormerConfig(
        backbone_config=backbone, num_labels=num_labels, num_queries=tiny["queries"], conv_dim=tiny["width"],
        mask_dim=tiny["width"], hidden_dim=tiny["width"], encoder_feedforward_dim=2 * tiny["width"],
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=2 * tiny["width"],
        query_dec_layers=1, text_encoder_width=tiny["width"], text_encoder_num_layers=1, text_encoder_n_ctx=2,
        text_encoder_vocab_size=len(clip_vocab()))
    model = OneFormerForUniversalSegmentation(config).eval()
    decoder = model.model.transformer_module.decoder
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        # Untrained queries are near copies of one another, so every pixel would get the same class: spread the
        # queries apart and sharpen their classes and masks, so that a map has several regions.
        model.model.transformer_module.queries_embedder.weight.mul_(50.0)
        decoder.class_embed.weight.mul_(10.0)
        [*(m for m in decoder.mask_embed.modules() if isinstance(m, torch.nn.Linear))][-1].weight.mul_(3.0)
    return model


def _oneformer(num_labels: int) -> dict:
    """The folder's files: config.json, pytorch_model.bin (as on the Hub) and the tokenizer's text files."""
    import json
    import tempfile

    from engine.demo.tokenizer import write_clip_tokenizer

    model = tiny_oneformer(num_labels)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = write_clip_tokenizer(Path(scratch))
        files = {path.name: path.read_text(encoding="utf-8") for path in tokenizer.iterdir()}
    return {**files, "config.json": json.dumps(model.config.to_dict(), indent=2),
            "pytorch_model.bin": model.state_dict()}


SMALL: dict[str, Callable[[], dict]] = {"hed": _hed, "pidinet": _pidinet, "mlsd": _mlsd, "lineart": _lineart,
                                        "depth_anything": _depth_anything, "depth_anything_v2": _depth_anything_v2,
                                        "dwpose": _dwpose, "animal_pose": _animal_pose,
                                        "anime_face_segment": _anime_face, "mobile_sam": _mobile_sam,
                                        "oneformer_ade20k": functools.partial(_oneformer, 150),
                                        "oneformer_coco": functools.partial(_oneformer, 133),
                                        "clip_h": functools.partial(_clip_vision, "clip_h"),
                                        "clip_g": functools.partial(_clip_vision, "clip_g")}
LARGE: dict[str, Callable[[], dict]] = {"lineart_anime": _lineart_anime, "openpose": _openpose, "midas": _midas,
                                        "normal_bae": _normal_bae, "lama": _lama}


def write_random_annotators(models_dir: Path, names=tuple(SMALL), seed: int = 0) -> list[Path]:
    """Write the named annotators' files under `<models>/ControlNetAnnotators/<folder>/`."""
    writers = {**SMALL, **LARGE}
    written = []
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        for name in names:
            folder = Path(models_dir) / DOWNLOAD_FOLDER / ANNOTATORS[name].folder
            folder.mkdir(parents=True, exist_ok=True)
            for file, contents in writers[name]().items():
                _save(contents, folder / file)
                written.append(folder / file)
    logger.info("wrote %d random-weight annotator files under %s", len(written), models_dir)
    return written


def _save(contents, path: Path) -> None:
    """In the file's own format: text, safetensors, ONNX, or a torch pickle; written atomically."""
    with written_atomically(path) as partial:
        if isinstance(contents, str):
            partial.write_text(contents, encoding="utf-8")
        elif path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({key: value.contiguous() for key, value in contents.items()}, partial)
        elif path.suffix == ".onnx":
            import onnx

            onnx.checker.check_model(contents)
            onnx.save(contents, partial)
        else:
            torch.save(contents, partial)
