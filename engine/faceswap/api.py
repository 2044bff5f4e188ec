"""ReActor's own endpoint, `POST /reactor/image`: one target image swapped with a source face, no generation.

Its body fields and defaults are those of sd-webui-reactor's `scripts/reactor_api.py` (Gourieff, AGPL-3.0);
they are mapped onto the script's positional args, so both doors validate and run the same way. Errors name
the body field.
"""

from typing import Any

from engine.errors import NotFoundError, RequestError, UnsupportedError
from engine.faceswap.args import POSITION, field, parse_reactor_args
from engine.faceswap.run import prepare_stage


# Body field → (script arg, ReActor's endpoint default). The endpoint takes 0/1 for its switches and lists of
# face numbers.
BODY_FIELDS: dict[str, tuple[str, Any]] = {
    "source_image": ("source_image", ""),
    "source_faces_index": ("source_faces_index", [0]),
    "face_index": ("faces_index", [0]),
    "upscaler": ("upscaler", "None"),
    "scale": ("upscaler_scale", 1),
    "upscale_visibility": ("upscaler_visibility", 1),
    "face_restorer": ("face_restorer", "None"),
    "restorer_visibility": ("restorer_visibility", 1),
    "codeformer_weight": ("codeformer_weight", 0.5),
    "restore_first": ("restore_first", 1),
    "model": ("model", "inswapper_128.onnx"),
    "gender_source": ("gender_source", 0),
    "gender_target": ("gender_target", 0),
    "device": ("device", "CPU"),
    "mask_face": ("mask_face", 0),
    "select_source": ("select_source", 0),
    "face_model": ("face_model", "None"),
    "source_folder": ("source_folder", ""),
    "random_image": ("random_image", 0),
    "upscale_force": ("upscale_force", 0),
    "det_thresh": ("det_thresh", 0.5),
    "det_maxnum": ("det_maxnum", 0),
}
IGNORED_FIELDS = ("save_to_file", "result_file_path")  # the worker returns the image; it writes no files


def swap_image(engine, payload: dict[str, Any]) -> dict[str, str]:
    """`{"image": base64 PNG}`: `target_image` with ReActor applied as its endpoint does.

    Raises:
        RequestError: a bad or missing field, named as in the body.
    """
    from engine.imaging.decode import decode_image
    from engine.imaging.png import encode_base64

    if payload.get("save_to_file") not in (None, 0, False):
        raise UnsupportedError("save_to_file", "the worker does not write files; send 0 and use the returned image")
    target, _ = decode_image(payload.get("target_image") or "", "target_image")
    args = [None] * len(POSITION)
    args[POSITION["enable"]] = True
    for body_name, (arg_name, default) in BODY_FIELDS.items():
        value = payload.get(body_name, default)
        if arg_name in ("source_faces_index", "faces_index") and isinstance(value, list):
            value = ",".join(str(number) for number in value)
        args[POSITION[arg_name]] = value
    try:
        stage = prepare_stage(parse_reactor_args({"reactor": {"args": args}}), engine)
    except RequestError as exc:
        raise _renamed(exc) from None
    result, _, _ = stage.apply(target.convert("RGB"), seed=0)
    if target.mode == "RGBA" and result.size == target.size:
        result = result.convert("RGBA")
        result.putalpha(target.getchannel("A"))  # ReActor keeps the target's transparency
    return {"image": encode_base64(result, None)}


def _renamed(error: RequestError) -> RequestError:
    """The same error, naming the body field instead of the script arg."""
    names = {field(arg_name): body_name for body_name, (arg_name, _) in BODY_FIELDS.items()}
    where = names.get(error.field, error.field)
    for kind in (UnsupportedError, NotFoundError, RequestError):
        if isinstance(error, kind):
            return kind(where, error.message)
    return error
