"""ReActor's positional `alwayson_scripts.reactor.args` → a typed `ReactorArgs`. Pure: no torch, no models.

The order is the list sd-webui-reactor's `FaceSwapScript.ui()` returns (Gourieff/sd-webui-reactor
`scripts/reactor_faceswap.py`, AGPL-3.0; its `example/api_example.py` documents the first 30). A1111 fills the
positions a client leaves out with the UI's defaults (`modules/api/api.py` `init_script_args`), so a missing
or null arg takes the value of that control's default here too.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import RequestError, UnsupportedError


SCRIPT_TITLE = "ReActor"
FIELD = "alwayson_scripts.reactor.args"

# (name, UI default) by position. `model` defaults to the first installed swap model (ReActor's dropdown
# shows the models folder's files); `face_restorer` to A1111's first restorer, CodeFormer.
ARG_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("source_image", None),
    ("enable", False),
    ("source_faces_index", "0"),
    ("faces_index", "0"),
    ("model", ""),
    ("face_restorer", "CodeFormer"),
    ("restorer_visibility", 1.0),
    ("restore_first", True),
    ("upscaler", "None"),
    ("upscaler_scale", 1.0),
    ("upscaler_visibility", 1.0),
    ("swap_in_source", False),
    ("swap_in_generated", True),
    ("console_logging_level", 1),
    ("gender_source", 0),
    ("gender_target", 0),
    ("save_original", False),
    ("codeformer_weight", 0.5),
    ("source_hash_check", True),
    ("target_hash_check", False),
    ("device", "CPU"),
    ("mask_face", False),
    ("select_source", 0),
    ("face_model", "None"),
    ("source_folder", ""),
    ("source_images", None),
    ("random_image", False),
    ("upscale_force", False),
    ("det_thresh", 0.5),
    ("det_maxnum", 0),
    ("selected_tab", "tab_single"),
)
POSITION = {name: index for index, (name, _) in enumerate(ARG_DEFAULTS)}
GENDERS = {0: "No", 1: "Female Only", 2: "Male Only"}
DEVICES = ("CPU", "CUDA")
SOURCE_KINDS = {0: "image", 1: "face model", 2: "folder"}


def field(name: str) -> str:
    """The request field of ReActor arg `name`: `alwayson_scripts.reactor.args[<position>]`."""
    return f"{FIELD}[{POSITION[name]}]"


@dataclass(frozen=True)
class ReactorArgs:
    """The ReActor args this worker acts on, validated. Indices are 0-based positions in the left-to-right
    order ReActor sorts faces in; `gender_*` is 0 (any), 1 (female only) or 2 (male only)."""

    source_image: str | None  # base64, when `select_source` is 0
    source_faces_index: tuple[int, ...]
    faces_index: tuple[int, ...]
    model: str | None  # the swap model's file name as sent; None: the first installed
    face_restorer: str | None  # None: no restoration
    restorer_visibility: float
    codeformer_weight: float
    restore_first: bool
    upscaler: str | None  # None: no upscaling
    upscaler_scale: float
    upscaler_visibility: float
    upscale_force: bool
    gender_source: int
    gender_target: int
    device: str
    face_model: str | None  # a file of models/reactor/faces, when `select_source` is 1
    det_thresh: float
    det_maxnum: int
    mask_face: bool = False  # paste each face back through a face parser's mask

    @property
    def enhances(self) -> bool:
        return self.face_restorer is not None or self.upscaler is not None


def parse_reactor_args(alwayson_scripts: Mapping[str, Any] | None, img2img: bool = False) -> ReactorArgs | None:
    """The request's ReActor args, or None when the script is absent or not enabled.

    Raises:
        RequestError: a malformed arg, naming its position and what it accepts.
        UnsupportedError: a ReActor mode this worker does not run (folder or multiple sources, swapping into
            img2img's source image, keeping the originals).
    """
    values = _script_args(alwayson_scripts)
    if values is None:
        return None
    arg = _reader(values)
    if not _flag(arg("enable"), "enable"):
        return None
    _refuse_unsupported(arg, img2img)
    if not _flag(arg("swap_in_generated"), "swap_in_generated"):
        return None  # ReActor's img2img "swap in source image only": nothing happens after generation
    select_source = _integer(arg("select_source"), "select_source", SOURCE_KINDS)
    source_image = arg("source_image")
    face_model = _text(arg("face_model"), "face_model")
    if select_source == 0:
        if not isinstance(source_image, str) or not source_image:
            raise RequestError(field("source_image"), "ReActor needs a source face: a base64-encoded image "
                                                      "(or select_source 1 with a face model)")
    elif face_model in ("", "None"):
        raise RequestError(field("face_model"), "select_source 1 needs a face model file name from "
                                                "models/reactor/faces (GET /reactor/facemodels lists them)")
    restorer = _text(arg("face_restorer"), "face_restorer")
    upscaler = _text(arg("upscaler"), "upscaler")
    device = _text(arg("device"), "device")
    if device not in DEVICES:
        raise RequestError(field("device"), f"must be one of {', '.join(DEVICES)}, got {device!r}")
    mask_face = _flag(arg("mask_face"), "mask_face")
    upscaler_scale = _number(arg("upscaler_scale"), "upscaler_scale", 1.0, 8.0)
    restore_first = _flag(arg("restore_first"), "restore_first")
    if mask_face and upscaler not in ("", "None") and upscaler_scale != 1 and not restore_first:
        # ReActor's `enhance_image_and_mask` then blends the upscaled image with the original at its old size,
        # which PIL refuses: the swap fails and the image comes back unswapped.
        raise RequestError(field("mask_face"), "face mask correction with upscaling before restoring (restore "
                                               "first false, scale above 1) fails in ReActor; send restore "
                                               "first true or scale 1")
    return ReactorArgs(
        source_image=source_image if select_source == 0 else None,
        source_faces_index=_indices(arg("source_faces_index"), "source_faces_index"),
        faces_index=_indices(arg("faces_index"), "faces_index"),
        model=_text(arg("model"), "model") or None,
        face_restorer=None if restorer in ("", "None") else restorer,
        restorer_visibility=_fraction(arg("restorer_visibility"), "restorer_visibility"),
        codeformer_weight=_fraction(arg("codeformer_weight"), "codeformer_weight"),
        restore_first=restore_first,
        upscaler=None if upscaler in ("", "None") else upscaler,
        upscaler_scale=upscaler_scale,
        upscaler_visibility=_fraction(arg("upscaler_visibility"), "upscaler_visibility"),
        upscale_force=_flag(arg("upscale_force"), "upscale_force"),
        gender_source=_integer(arg("gender_source"), "gender_source", GENDERS),
        gender_target=_integer(arg("gender_target"), "gender_target", GENDERS),
        device=device,
        face_model=face_model if select_source == 1 else None,
        det_thresh=_number(arg("det_thresh"), "det_thresh", 0.1, 1.0),
        det_maxnum=int(_number(arg("det_maxnum"), "det_maxnum", 0, 20)),
        mask_face=mask_face,
    )


def _script_args(alwayson_scripts: Mapping[str, Any] | None) -> list[Any] | None:
    """The args list under the `reactor` key (matched case-insensitively, as A1111 matches script titles)."""
    for key, value in (alwayson_scripts or {}).items():
        if key.lower() != SCRIPT_TITLE.lower():
            continue
        values = value.get("args", []) if isinstance(value, Mapping) else value
        if values is None:
            return []
        if not isinstance(values, list):
            raise RequestError(FIELD, f"must be a list of ReActor's positional args, got {type(values).__name__}")
        return values
    return None


def _reader(values: list[Any]):
    def arg(name: str) -> Any:
        position = POSITION[name]
        value = values[position] if position < len(values) else None
        return ARG_DEFAULTS[position][1] if value is None else value

    return arg


def _refuse_unsupported(arg, img2img: bool) -> None:
    """ReActor modes that would change what the response holds or read files named by the client."""
    select_source = _integer(arg("select_source"), "select_source", SOURCE_KINDS)
    if select_source == 2:
        # ReActor reads every image of a folder path the client names, anywhere on the server's disk: a
        # request must not choose files outside the models folder.
        raise UnsupportedError(field("select_source"), "a source folder on the server (2) is not supported (it "
                                                      "reads any server path the request names); send the "
                                                      "source image (0) or a face model (1)")
    if select_source == 0 and arg("selected_tab") != "tab_single":
        _refuse_multiple_sources(arg("source_images"))
    if _flag(arg("save_original"), "save_original"):
        # ReActor then returns the originals, the swapped copies after them and a grid in front: a response
        # of another shape than the request's batch.
        raise UnsupportedError(field("save_original"), "returning the originals beside the swapped images is "
                                                       "not supported; send false")
    if img2img and _flag(arg("swap_in_source"), "swap_in_source"):
        raise UnsupportedError(field("swap_in_source"), "swapping into img2img's source image is not supported "
                                                        "yet; send false (the swap runs on the generated image)")


def _refuse_multiple_sources(images: Any) -> None:
    """ReActor's "multiple source images" tab (any `selected_tab` but "tab_single"; on the single tab the list is
    ignored, and on this tab args[0] is). ReActor does not blend them: each source image's face is swapped into
    its own copy of the result, and those copies replace the generated images. Through A1111's API the list
    never gets that far: ReActor opens each entry as an uploaded file (`get_images_from_list` reads `x.name`),
    so base64 strings fail there and the images come back unswapped."""
    if images in (None, [], ""):
        raise RequestError(field("source_images"), "ReActor's multiple-sources tab (selected_tab not "
                                                   "\"tab_single\") needs source images and ignores args[0]; "
                                                   "send selected_tab \"tab_single\" with the source in args[0]")
    raise UnsupportedError(field("source_images"), "multiple source images are not supported (ReActor swaps "
                                                   "each into its own extra image and cannot read a base64 list "
                                                   "through A1111's API); send selected_tab \"tab_single\" with "
                                                   "one source in args[0], or a blended face model (select_source "
                                                   "1)")


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise RequestError(field(name), f"must be true or false, got {value!r:.40}")


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RequestError(field(name), f"must be a string, got {value!r:.40}")
    return value.strip()


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RequestError(field(name), f"must be a number from {low:g} to {high:g}, got {value!r:.40}")
    try:
        number = float(value)
    except ValueError:
        raise RequestError(field(name), f"must be a number from {low:g} to {high:g}, got {value!r:.40}") from None
    if not low <= number <= high:
        raise RequestError(field(name), f"must be a number from {low:g} to {high:g}, got {value!r:.40}")
    return number


def _fraction(value: Any, name: str) -> float:
    return _number(value, name, 0.0, 1.0)


def _integer(value: Any, name: str, accepted: Mapping[int, str]) -> int:
    """A radio index (ReActor's gender and source radios send the index); the labels are accepted too."""
    labels = {label.lower(): index for index, label in accepted.items()}
    if isinstance(value, str) and value.strip().lower() in labels:
        return labels[value.strip().lower()]
    if not isinstance(value, bool) and isinstance(value, int | float) and value in accepted:
        return int(value)
    listed = ", ".join(f"{index} ({label})" for index, label in accepted.items())
    raise RequestError(field(name), f"must be one of {listed}, got {value!r:.40}")


def _indices(value: Any, name: str) -> tuple[int, ...]:
    """ReActor's comma-separated face numbers ("0", "1,0,2"): spaces and entries that are not numbers are
    dropped, and an empty list means face 0, as ReActor parses them."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, list):
        value = ",".join(str(item) for item in value)
    if not isinstance(value, str):
        raise RequestError(field(name), f"must be comma-separated face numbers such as \"0\" or \"1,0\", "
                                        f"got {value!r:.40}")
    numbers = tuple(int(part) for part in value.replace(" ", "").strip(",").split(",") if part.isnumeric())
    return numbers or (0,)
