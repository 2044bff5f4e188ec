"""Loading ControlNets, InstantID's IP-Adapter weights and the face analyser from the models folder, offline,
each file once (kept in small LRU caches the engine owns)."""

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.control.faces import FaceAnalyser, find_antelopev2
from engine.control.maps.annotators import AnnotatorStore
from engine.errors import NotFoundError, UnsupportedError
from engine.resources.cache import ResidentCache
from engine.resources.model_files import load_listed


logger = logging.getLogger(__name__)

CONTROLNET_CLASS = "ControlNetModel"
CONTROLNET_FIELD = "controlnet.model"
UNION_CLASS = "ControlNetUnionModel"
ADAPTER_CLASS = "T2IAdapter"
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
IP_ADAPTER_PARTS = ("image_proj", "ip_adapter")
# What a control model is, by class (sd-webui-controlnet `controlnet_model_guess.py` tells them by keys).
CONTROLNET, UNION, ADAPTER = "controlnet", "union", "t2i_adapter"
_KIND_OF_CLASS = {CONTROLNET_CLASS: CONTROLNET, UNION_CLASS: UNION, ADAPTER_CLASS: ADAPTER}


def model_kind(model) -> str:
    """CONTROLNET, UNION or ADAPTER for a loaded diffusers model."""
    return _KIND_OF_CLASS.get(type(model).__name__, CONTROLNET)


def file_kind(keys) -> str:
    """What a weights file holds, from its key names: a union ControlNet (xinsir ProMax: `task_embedding`),
    a T2I-Adapter (TencentARC's `body.N.block1` or diffusers' `adapter.body.`), else a ControlNet."""
    keys = set(keys)
    if "task_embedding" in keys or "control_add_embedding.linear_1.weight" in keys:
        return UNION
    if "conv_in.weight" in keys and any(k.startswith(("body.0.block1.", "adapter.")) for k in keys) or any(
            k.startswith("adapter.body.") for k in keys):
        return ADAPTER
    return CONTROLNET


class ControlModels:
    """The control models a request needs, loaded on first use straight to the device and dtype. With the
    `catalog` that lists them, a damaged or vanished file is reported by name and nothing is cached for it."""

    def __init__(self, models_root: Path, config_roots: Sequence[Path], device: torch.device,
                 dtype: torch.dtype, capacity: int = 2, catalog=None, prepare=None):
        self.models_root = Path(models_root)
        self.catalog = catalog
        self.config_roots = tuple(Path(root) for root in config_roots)
        self.device = torch.device(device)
        self.dtype = dtype
        # Applied to each loaded ControlNet (the worker's opt-in speed-ups: channels-last, compilation).
        self.prepare = prepare
        self._controlnets = ResidentCache(self._checked(self._load_controlnet), capacity)
        self._ip_adapters = ResidentCache(self._checked(self._load_ip_adapter), 1)
        self._face_analysers = ResidentCache(lambda pack: FaceAnalyser(pack, self.device.type), 1)
        self._annotators = AnnotatorStore(self.models_root, self.device)

    def annotator(self, name: str, field: str = "module"):
        """A preprocessor's detector (controlnet_aux / spandrel) from the annotator folder, on the device."""
        return self._annotators.get(name, field)

    def controlnet(self, path: Path):
        """A `ControlNetModel` from a single file (LDM or diffusers keys) or a diffusers folder, in eval mode."""
        return self._controlnets.get(Path(path))

    def ip_adapter(self, path: Path) -> dict[str, dict[str, torch.Tensor]]:
        """An IP-Adapter state dict {"image_proj": ..., "ip_adapter": ...} on the device, in the dtype."""
        return self._ip_adapters.get(Path(path))

    def face_analyser(self) -> FaceAnalyser:
        return self._face_analysers.get(find_antelopev2(self.models_root))

    def resident(self) -> list[Path]:
        """The ControlNet and IP-Adapter files loaded now."""
        return [*self._controlnets.resident(), *self._ip_adapters.resident()]

    def _checked(self, load):
        if self.catalog is None:
            return load
        return lambda path: load_listed(self.catalog, path, CONTROLNET_FIELD, lambda: load(path))

    def _load_controlnet(self, path: Path):
        from diffusers import ControlNetModel  # deferred: importing diffusers models costs seconds

        common = {"torch_dtype": self.dtype, "local_files_only": True}
        if path.is_dir():
            model = _folder_class(path).from_pretrained(path, **common)
        else:
            kind = file_kind(_weight_shapes(path))
            if kind == ADAPTER:
                model = load_adapter_file(path, self.dtype)
            elif kind == UNION:
                config = find_controlnet_config(path, self.config_roots, UNION_CLASS)
                logger.info("loading union ControlNet %s with the config in %s", path.name, config)
                model = _load_with_config(path, config, UNION_CLASS, self.dtype)
            else:
                config = find_controlnet_config(path, self.config_roots)
                logger.info("loading ControlNet %s with the config in %s", path.name, config)
                model = ControlNetModel.from_single_file(str(path), config=str(config), **common)
                if "shuffle" in path.stem.lower():
                    # sd-webui-controlnet `build_model_by_guess`: "shuffle" in the file name means global
                    # average pooling of the residuals (control_v11e_sd15_shuffle), fed to the prompt rows only.
                    model.register_to_config(global_pool_conditions=True)
        if model.device != self.device:
            model = model.to(self.device)
        model = model.eval().requires_grad_(False)
        if self.prepare is not None and kind != ADAPTER:
            model = self.prepare(model)
        return model

    def _load_ip_adapter(self, path: Path) -> dict[str, dict[str, torch.Tensor]]:
        weights = read_ip_adapter(path)
        return {part: {key: tensor.to(self.device, self.dtype) for key, tensor in weights[part].items()}
                for part in IP_ADAPTER_PARTS}


def read_state_dict(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or a tensor-only pickle (never arbitrary objects). With `mmap`, a
    pickle's tensors stay on disk until read (for looking at names and shapes)."""
    if path.is_dir():
        raise UnsupportedError("controlnet.model", f"{path.name} is a folder; expected a weights file")
    if path.suffix.lower() == ".safetensors":
        return load_file(str(path))
    loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    return loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else loaded


def read_ip_adapter(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """InstantID's `ip-adapter.bin` ({"image_proj": Resampler, "ip_adapter": to_k_ip/to_v_ip per cross-attention})
    or the same flattened into a safetensors file ("image_proj.latents", ...), as diffusers' loader reads them.

    Raises:
        UnsupportedError: another IP-Adapter family (only the Resampler layout InstantID uses is supported).
    """
    loaded = read_state_dict(path)
    if not all(part in loaded for part in IP_ADAPTER_PARTS):
        loaded = {part: {key.removeprefix(f"{part}."): tensor for key, tensor in loaded.items()
                         if key.startswith(f"{part}.")} for part in IP_ADAPTER_PARTS}
    if not loaded["ip_adapter"] or "latents" not in loaded["image_proj"]:
        raise UnsupportedError("controlnet.model", f"{path.name} is not an InstantID IP-Adapter (no Resampler "
                                                   "'image_proj.latents'); only InstantID's is supported")
    return loaded


def find_controlnet_config(path: Path, config_roots: Sequence[Path], class_name: str = CONTROLNET_CLASS) -> Path:
    """The config folder (`<root>/<name>/config.json` of a `class_name` model) whose architecture has exactly
    the weights of `path`, after diffusers' LDM → diffusers key conversion where the file uses LDM keys.

    Raises:
        NotFoundError: no config fits, listing those tried.
    """
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    found = _weight_shapes(path)
    if any(key.split(".", 1)[0] in IP_ADAPTER_PARTS for key in found):
        raise UnsupportedError("controlnet.model", f"{path.name} is an IP-Adapter, not a ControlNet; use it with "
                                                   "the 'instant_id_face_embedding' module")
    tried = []
    for folder in _controlnet_config_folders(config_roots, class_name):
        config = json.loads((folder / "config.json").read_text())
        tried.append(folder.name)
        converted = dict(found) if class_name != CONTROLNET_CLASS else convert_controlnet_checkpoint(dict(found), config)
        shapes = {key: tuple(tensor.shape) for key, tensor in converted.items() if tensor is not None}
        if shapes == _expected_shapes(folder / "config.json"):
            return folder
    roots = ", ".join(str(root) for root in config_roots)
    raise NotFoundError("controlnet.model", f"no ControlNet config in {roots} fits {path.name} "
                                            f"(tried {tried or 'none'}); run download_models.py for the configs")


def _controlnet_config_folders(config_roots: Sequence[Path], class_name: str = CONTROLNET_CLASS) -> list[Path]:
    folders = []
    for root in config_roots:
        for config in sorted(Path(root).glob("*/config.json")):
            try:
                if _CLASS_ALIASES.get(json.loads(config.read_text()).get("_class_name")) == class_name:
                    folders.append(config.parent)
            except (OSError, ValueError) as exc:
                logger.warning("skipping unreadable config %s: %s", config, exc)
    return folders


def _weight_shapes(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors as empty meta tensors (names and shapes only; safetensors reads just the header)."""
    if path.suffix.lower() == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            return {key: torch.empty(handle.get_slice(key).get_shape(), device="meta") for key in handle.keys()}  # noqa: SIM118
    return {key: torch.empty(tensor.shape, device="meta") for key, tensor in _flat(read_state_dict(path, mmap=True))}


def _flat(tree: Mapping, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Nested dicts of tensors (an IP-Adapter pickle) as dotted names."""
    items = []
    for key, value in tree.items():
        items += _flat(value, f"{prefix}{key}.") if isinstance(value, Mapping) else [(prefix + key, value)]
    return items


def _expected_shapes(config_file: Path) -> dict[str, tuple[int, ...]]:
    """Weight shapes of the model a config describes, built on the meta device (no memory, no init)."""
    config = json.loads(config_file.read_text())
    with torch.device("meta"):
        model = _diffusers_class(config.get("_class_name", CONTROLNET_CLASS)).from_config(config)
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


# Config `_class_name`s → diffusers class: xinsir's union configs name their own class.
_CLASS_ALIASES = {CONTROLNET_CLASS: CONTROLNET_CLASS, UNION_CLASS: UNION_CLASS, "ControlNetModel_Union": UNION_CLASS,
                  ADAPTER_CLASS: ADAPTER_CLASS}


def _diffusers_class(name: str):
    import diffusers

    return getattr(diffusers, _CLASS_ALIASES.get(name, name))


def _folder_class(path: Path):
    """The diffusers class a model folder's config.json names (ControlNet, union ControlNet, T2I-Adapter)."""
    name = json.loads((path / "config.json").read_text()).get("_class_name", CONTROLNET_CLASS)
    if name not in _KIND_OF_CLASS:
        raise UnsupportedError("controlnet.model", f"{path.name} holds a {name}, not a ControlNet, union ControlNet "
                                                   "or T2I-Adapter")
    return _diffusers_class(name)


def _load_with_config(path: Path, config_folder: Path, class_name: str, dtype: torch.dtype):
    """A diffusers-keyed single file into the model its config folder describes (weights assigned, no init)."""
    config = json.loads((config_folder / "config.json").read_text())
    with torch.device("meta"):
        model = _diffusers_class(class_name).from_config(config)
    model.load_state_dict({k: v.to(dtype) for k, v in read_state_dict(path).items()}, strict=True, assign=True)
    return model


def load_adapter_file(path: Path, dtype: torch.dtype):
    """A T2I-Adapter single file: TencentARC's original keys (what sd-webui-controlnet loads) or diffusers'
    `adapter.*` keys, as diffusers' `T2IAdapter` (the SD1.5 full adapter; the config follows from the shapes)."""
    from diffusers import T2IAdapter

    state = read_state_dict(path)
    if not any(key.startswith("adapter.") for key in state):
        state = adapter_to_diffusers(state)
    levels = 1 + max(int(key.split(".")[2]) for key in state if key.startswith("adapter.body."))
    channels = [state[f"adapter.body.{level}.resnets.0.block1.weight"].shape[0] for level in range(levels)]
    blocks = 1 + max(int(key.split(".")[4]) for key in state if ".resnets." in key)
    in_channels = state["adapter.conv_in.weight"].shape[1] // 64
    if len(channels) != 4:
        raise UnsupportedError("controlnet.model", f"{path.name}: only the SD1.5 full T2I-Adapter loads from a single "
                                                   "file; use the diffusers folder of other adapters")
    with torch.device("meta"):
        model = T2IAdapter(in_channels=in_channels, channels=channels, num_res_blocks=blocks,
                           adapter_type="full_adapter")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model


def adapter_to_diffusers(state: dict[str, torch.Tensor], blocks: int = 2) -> dict[str, torch.Tensor]:
    """TencentARC's `Adapter` keys (`body.{level·blocks + block}.block1`, `conv_in`) → diffusers' `FullAdapter`
    (`adapter.body.{level}.resnets.{block}.block1`, `adapter.body.{level}.in_conv`), the inverse of
    sd-webui-controlnet's diffusers → original renaming."""
    converted = {}
    for key, value in state.items():
        if key.startswith("body."):
            _, number, rest = key.split(".", 2)
            level, block = divmod(int(number), blocks)
            if rest.startswith("in_conv."):
                converted[f"adapter.body.{level}.{rest}"] = value
            else:
                converted[f"adapter.body.{level}.resnets.{block}.{rest}"] = value
        else:
            converted[f"adapter.{key}"] = value
    return converted
