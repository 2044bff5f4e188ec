"""IP-Adapter files by family, and which module (image encoder, face analysis) each family reads. No torch.

sd-webui-controlnet v1.1.455 (`scripts/ipadapter/ipadapter_model.py IPAdapterModel.load`, GPL-3.0; the rules
re-implemented here) tells the families apart by the `image_proj` keys and the file name; diffusers'
`_convert_ip_adapter_image_proj_to_diffusers` by the keys alone. Both agree on the files h94 publishes:

| family | `image_proj` keys | the projection reads |
|---|---|---|
| plain (`ip-adapter_sd15`, `ip-adapter_sdxl(_vit-h)`) | `proj.weight`, `norm.*` | CLIP `image_embeds` |
| plus (`ip-adapter-plus(-face)_sd15`, `ip-adapter-plus_sdxl_vit-h`) | a Resampler (`latents`, `proj_in`…) | CLIP penultimate hidden states |
| full face (`ip-adapter-full-face_sd15`) | `proj.0`, `proj.2`, `proj.3` | CLIP penultimate hidden states |
| FaceID (`ip-adapter-faceid_sd15`) | `proj.0`, `proj.2`, `norm` | insightface's normed embedding |
| FaceID Plus (`ip-adapter-faceid-plus(v2)_sd15`) | `perceiver_resampler.*`, `proj.*`, `norm` | normed embedding + CLIP hidden states |
| InstantID (`ip-adapter_instant_id_sdxl`) | a Resampler reading 512 numbers | antelopev2's raw embedding |
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import RequestError


Weights = Mapping[str, Mapping[str, Any]]  # {"image_proj": {name: tensor}, "ip_adapter": {name: tensor}}


PLAIN, PLUS, FULL_FACE, FACE_ID, FACE_ID_PLUS, INSTANT_ID = (
    "plain", "plus", "full face", "FaceID", "FaceID Plus", "InstantID")
# The modules each family runs with (sd-webui-controlnet `ipadapter/presets.py`).
CLIP_MODULES = ("ip-adapter_clip_sd15", "ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl_plus_vith")
MODULES_OF_FAMILY = {PLAIN: CLIP_MODULES, PLUS: CLIP_MODULES, FULL_FACE: CLIP_MODULES,
                     FACE_ID: ("ip-adapter_face_id",), FACE_ID_PLUS: ("ip-adapter_face_id_plus",),
                     INSTANT_ID: ("instant_id_face_embedding",)}
AUTO_MODULE = "ip-adapter-auto"
FACE_EMBEDDING_WIDTH = 512  # insightface's ArcFace vector
# Families whose projection reads CLIP's penultimate hidden states rather than its projected embedding.
READS_HIDDEN_STATES = (PLUS, FULL_FACE, FACE_ID_PLUS)


@dataclass(frozen=True)
class AdapterFile:
    """What an IP-Adapter file is: its family, the UNet width it was trained for, the width its projection
    reads from CLIP (None: no CLIP input) and whether FaceID Plus adds the ID tokens back (v2's shortcut)."""

    family: str
    cross_attention_dim: int
    clip_width: int | None
    shortcut: bool = False


def describe_adapter(weights: Weights, file_name: str) -> AdapterFile:
    """The family of `{"image_proj", "ip_adapter"}` weights; `file_name` tells InstantID and FaceID Plus v2
    (sd-webui-controlnet: "instant_id" / "v2" in the name; a Resampler reading 512 numbers is InstantID's too)."""
    proj = weights["image_proj"]
    cross = int(weights["ip_adapter"]["1.to_k_ip.weight"].shape[1])
    name = file_name.lower()
    if "perceiver_resampler.proj_in.weight" in proj:
        return AdapterFile(FACE_ID_PLUS, cross, int(proj["perceiver_resampler.proj_in.weight"].shape[1]),
                           shortcut="v2" in name)
    if "latents" in proj:
        # A Resampler reading 512 numbers is InstantID's whatever its name (InstantX calls it ip-adapter.bin):
        # no CLIP tower is 512 wide.
        width = int(proj["proj_in.weight"].shape[1])
        if "instant_id" in name or width == FACE_EMBEDDING_WIDTH:
            return AdapterFile(INSTANT_ID, cross, None)
        return AdapterFile(PLUS, cross, width)
    if "proj.3.weight" in proj:
        return AdapterFile(FULL_FACE, cross, int(proj["proj.0.weight"].shape[1]))
    if "proj.weight" in proj:
        return AdapterFile(PLAIN, cross, int(proj["proj.weight"].shape[1]))
    return AdapterFile(FACE_ID, cross, None)


def auto_module(model: str) -> str:
    """sd-webui-controlnet's `ip-adapter-auto`: the module its preset table gives the model's file name."""
    name = model.split("[")[0].strip().lower()
    if "instant_id" in name:
        return "instant_id_face_embedding"
    if "faceid" in name:
        return "ip-adapter_face_id_plus" if "plus" in name else "ip-adapter_face_id"
    if "vit-g" in name or ("sdxl" in name and "vit-h" not in name):
        return "ip-adapter_clip_sdxl"
    return "ip-adapter_clip_sd15"


def check_module_fits(adapter: AdapterFile, module: str, encoder_widths: tuple[int, int] | None,
                      field: str, model: str) -> None:
    """The module reads what the file's projection expects: its family's module, and an image encoder whose
    output width (`encoder_widths`: projected, hidden) is the one the file was trained on.

    Raises:
        RequestError: naming the modules that fit.
    """
    fitting = MODULES_OF_FAMILY[adapter.family]
    if module not in fitting:
        raise RequestError(field, f"{model!r} is a {adapter.family} IP-Adapter; use it with module "
                                  f"{' or '.join(repr(m) for m in fitting)}, not {module!r}")
    if adapter.clip_width is None or encoder_widths is None:
        return
    width = encoder_widths[1] if adapter.family in READS_HIDDEN_STATES else encoder_widths[0]
    if width != adapter.clip_width:
        raise RequestError(field, f"{model!r} reads {adapter.clip_width}-wide CLIP features; module {module!r} "
                                  f"gives {width} (ip-adapter_clip_sd15 / _sdxl_plus_vith run ViT-H, "
                                  "ip-adapter_clip_sdxl ViT-bigG)")


def check_unet_fits(adapter: AdapterFile, weights: Weights, unet,
                    field: str, model: str) -> None:
    """The adapter's image attention fits every cross-attention of the UNet (same width, same count).

    Raises:
        RequestError: an adapter for another model family (SD1.5 vs SDXL).
    """
    cross_layers = sum(1 for name in unet.attn_processors if name.endswith("attn2.processor"))
    keys = [key for key in weights["ip_adapter"] if key.endswith(".to_k_ip.weight")]
    if adapter.cross_attention_dim != unet.config.cross_attention_dim or len(keys) != cross_layers:
        raise RequestError(field, f"{model!r} does not fit this checkpoint (an IP-Adapter for another model "
                                  "family, e.g. SD1.5 vs SDXL)")
