"""ReActor on the tiny demo models, through insightface's real `FaceAnalysis` / `INSwapper` classes.

The tiny buffalo_l detector finds a face exactly where a test paints a bright square (see
`engine.control.tiny_faces`; a 16-pixel square on a 320-pixel image is one 32-pixel cell of its 640 input), and
its gender model calls a reddish face female and a greenish one male (`engine.faceswap.demo`). The swap model
has random weights: what these tests prove is which faces get swapped and in what order things run, not how
good a swap looks.
"""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from engine.errors import NotFoundError, RequestError
from engine.faceswap.args import ARG_DEFAULTS, parse_reactor_args
from engine.faceswap.run import prepare_stage


FEMALE, MALE = (255, 240, 110), (240, 255, 110)  # bright enough to be a face; red > green is female
LEFT, RIGHT = (64, 64), (64, 192)  # (row, column) of the two faces' top-left corners
SIZE = 320


def faces_image(*faces) -> Image.Image:
    """A black SIZE × SIZE image with one 16-pixel face per (colour, (row, column))."""
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    for colour, (row, column) in faces:
        pixels[row:row + 16, column:column + 16] = colour
    return Image.fromarray(pixels)


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


SOURCE = faces_image(((250, 250, 120), (160, 160)))  # on the 16-pixel grid: one detector cell


def reactor_args(source=SOURCE, **changes) -> list:
    """ReActor's args with the UI defaults, no restoration, the given source image and changes by name."""
    names = [name for name, _ in ARG_DEFAULTS]
    args = [default for _, default in ARG_DEFAULTS]
    args[0], args[1], args[5] = b64(source) if source is not None else None, True, "None"
    for name, value in changes.items():
        args[names.index(name)] = value
    return args


def stage(engine, source=SOURCE, **changes):
    return prepare_stage(parse_reactor_args({"reactor": {"args": reactor_args(source, **changes)}}), engine)


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    """Per-pixel: did any channel change."""
    return (np.asarray(before, dtype=int) != np.asarray(after, dtype=int)).any(axis=2)


def test_only_the_chosen_face_is_swapped(sd15_engine):
    """Face 1 counts from the left: the right face changes, the left one does not."""
    target = faces_image((FEMALE, LEFT), (MALE, RIGHT))
    result, pairs, notes = stage(sd15_engine, faces_index="1").apply(target, seed=1)
    diff = changed(target, result)
    assert len(pairs) == 1 and not notes
    assert diff[:, SIZE // 2:].sum() > 100 and not diff[:, :SIZE // 2].any()


def test_two_target_indices_swap_both_faces(sd15_engine):
    target = faces_image((FEMALE, LEFT), (MALE, RIGHT))
    result, pairs, _ = stage(sd15_engine, faces_index="1,0").apply(target, seed=1)
    diff = changed(target, result)
    assert [pair.target_index for pair in pairs] == [1, 0]
    assert diff[:, :SIZE // 2].any() and diff[:, SIZE // 2:].any()


@pytest.mark.parametrize(("gender", "swapped"), [(0, True), (1, False), (2, True)])
def test_target_gender_filter_uses_the_detected_gender(sd15_engine, gender, swapped):
    """The right face is male: "Female Only" leaves it, "Male Only" and "No" swap it."""
    target = faces_image((FEMALE, LEFT), (MALE, RIGHT))
    result, pairs, notes = stage(sd15_engine, faces_index="1", gender_target=gender).apply(target, seed=1)
    assert changed(target, result).any() == swapped
    assert (notes == ["target face 1 skipped: not female"]) == (not swapped)


def test_source_gender_filter_uses_the_detected_gender(sd15_engine):
    source = faces_image((FEMALE, LEFT), (MALE, RIGHT))
    target = faces_image((FEMALE, LEFT))
    female_only = stage(sd15_engine, source, source_faces_index="1", gender_source=1)
    assert female_only.sources == (None,)  # source face 1 is male
    result, pairs, _ = female_only.apply(target, seed=1)
    assert not pairs and not changed(target, result).any()
    male_only = stage(sd15_engine, source, source_faces_index="1", gender_source=2)
    assert changed(target, male_only.apply(target, seed=1)[0]).any()


def test_the_source_identity_reaches_the_swap(sd15_engine):
    """Two source faces of different colour (different embeddings) give different swaps of the same face."""
    target = faces_image((FEMALE, LEFT))
    source = faces_image((FEMALE, LEFT), (MALE, RIGHT))
    first = stage(sd15_engine, source, source_faces_index="0").apply(target, seed=1)[0]
    second = stage(sd15_engine, source, source_faces_index="1").apply(target, seed=1)[0]
    assert changed(first, second).any()


def test_face_model_source_swaps_like_its_image(sd15_engine, demo_models):
    """A face model saved from the source's analysed face (ReActor's safetensors layout) swaps identically."""
    from safetensors.numpy import save_file

    face = stage(sd15_engine).sources[0]
    folder = demo_models / "reactor" / "faces"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({key: np.asarray(face[key]) for key in ("bbox", "kps", "det_score", "embedding", "gender", "age")},
              str(folder / "painted.safetensors"))
    target = faces_image((FEMALE, LEFT))
    from_image = stage(sd15_engine).apply(target, seed=1)[0]
    from_model = stage(sd15_engine, None, select_source=1, face_model="painted.safetensors").apply(target, seed=1)[0]
    assert np.array_equal(np.asarray(from_image), np.asarray(from_model))
    assert "painted" in sd15_engine.handle("GET", "reactor/facemodels", {})["facemodels"]
    with pytest.raises(NotFoundError, match=r"args\[23\]: no face model named 'other'.*'painted.safetensors'"):
        stage(sd15_engine, None, select_source=1, face_model="other")


def test_detection_threshold_is_the_requests(sd15_engine):
    """The painted face scores about 0.65: found at ReActor's 0.5, not at 0.9."""
    with pytest.raises(RequestError, match=r"args\[0\]: no face found in the ReActor source image"):
        stage(sd15_engine, det_thresh=0.9)
    with pytest.raises(RequestError, match=r"args\[2\]: the ReActor source image has 1 face.*no face 1"):
        stage(sd15_engine, source_faces_index="1")


def test_upscaling_follows_a_swap_or_force(sd15_engine):
    faceless = Image.new("RGB", (SIZE, SIZE))
    upscale = stage(sd15_engine, upscaler="Lanczos", upscaler_scale=2)
    assert upscale.apply(faces_image((FEMALE, LEFT)), seed=1)[0].size == (2 * SIZE, 2 * SIZE)
    result, _, notes = upscale.apply(faceless, seed=1)
    assert result.size == (SIZE, SIZE) and notes == ["no target face 0 (0 found)"]
    forced = stage(sd15_engine, upscaler="Lanczos", upscaler_scale=2, upscale_force=True)
    assert forced.apply(faceless, seed=1)[0].size == (2 * SIZE, 2 * SIZE)


def test_blended_face_model_swaps_as_insightface_with_the_mean_embedding(sd15_engine, demo_models):
    """`POST /reactor/facemodels` (ReActor's `blend_faces`, compute method 0): the face model built from two
    source images swaps exactly as insightface's own `FaceAnalysis` + `INSwapper` do with a face whose
    embedding is the mean of the two images' first faces."""
    from insightface.app import FaceAnalysis
    from insightface.app.common import Face
    from insightface.model_zoo import get_model

    sources = [faces_image((FEMALE, LEFT)), faces_image((MALE, RIGHT))]
    answer = sd15_engine.handle("POST", "reactor/facemodels", {"source_images": [b64(image) for image in sources],
                                                                "name": "blended", "compute_method": 0})
    assert "blended" in answer["facemodels"]
    target = faces_image((FEMALE, LEFT))
    ours = stage(sd15_engine, None, select_source=1, face_model="blended").apply(target, seed=1)[0]

    def bgr(image):
        return np.ascontiguousarray(np.asarray(image)[:, :, ::-1])

    app = FaceAnalysis(name=str(demo_models / "insightface/models/buffalo_l"), providers=["CPUExecutionProvider"],
                       allowed_modules=["detection", "recognition", "genderage"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    mean = np.mean([app.get(bgr(image))[0].embedding for image in sources], axis=0)
    swapper = get_model(str(demo_models / "insightface/inswapper_128.onnx"), providers=["CPUExecutionProvider"])
    expected = swapper.get(bgr(target), app.get(bgr(target))[0], Face(embedding=mean), paste_back=True)
    assert np.array_equal(np.asarray(ours), expected[:, :, ::-1])
    single = stage(sd15_engine, sources[0]).apply(target, seed=1)[0]
    assert changed(single, ours).any()  # the blend is not the first image's face


@pytest.mark.parametrize(("body", "message"), [
    ({"name": "../escape"}, r"^name: must be a face model name"),
    ({"name": "ok", "compute_method": 3}, r"^compute_method: must be one of 0 \(Mean\)"),
    ({"name": "ok", "source_images": "SOURCE-LIST-OF-FACELESS"}, r"^source_images: no face found"),
])
def test_face_model_build_errors_name_the_body_field(sd15_engine, body, message):
    body = {"source_images": [b64(SOURCE)], **body}
    if body["source_images"] == "SOURCE-LIST-OF-FACELESS":
        body["source_images"] = [b64(Image.new("RGB", (64, 64)))]
    with pytest.raises(RequestError, match=message):
        sd15_engine.handle("POST", "reactor/facemodels", body)


# --- face mask correction (`mask_face`) ------------------------------------------------------------------------


@pytest.mark.parametrize(("bbox", "size", "region"), [
    # 31 × 40: the odd width grows to 32, then 4 each side makes it square (40); × 1.6 adds 12 each side.
    ((100.7, 50.2, 131.9, 90.5), (320, 320), (84, 38, 148, 102)),
    # Near the corner: the widened square is shifted back inside the image.
    ((2, 3, 22, 23), (320, 320), (0, 0, 32, 32)),
    # On a small image the margin shrinks to what fits (min side / box side).
    ((10, 10, 40, 40), (40, 60), (5, 0, 45, 40)),
])
def test_face_mask_region_is_reactors_face_area(bbox, size, region):
    from engine.faceswap.face_mask import face_region

    assert face_region(bbox, *size) == region


def masked_stage(engine, **changes):
    return stage(engine, mask_face=True, **changes)


def test_face_mask_keeps_everything_outside_the_face_region(sd15_engine):
    """Only the region around the swapped face can change, and there the result is the plain swap blended
    over the original through the parser's (blurred) mask twice: after the swap (`apply_face_mask`) and after
    the enhancement (`enhance_image_and_mask`), as ReActor blends it."""
    from engine.faceswap.face_mask import FaceMask, face_region

    target = faces_image((FEMALE, LEFT))
    plain, pairs, _ = stage(sd15_engine).apply(target, seed=1)
    masked_stage_ = masked_stage(sd15_engine)
    masked, _, _ = masked_stage_.apply(target, seed=1)
    left, top, right, bottom = face_region(pairs[0].target.bbox, SIZE, SIZE)
    diff = changed(target, masked)
    assert diff.any() and diff.sum() == diff[top:bottom, left:right].sum()
    before = np.ascontiguousarray(np.asarray(target)[:, :, ::-1])
    mask = FaceMask(masked_stage_.mask_parser, before.shape)
    mask.paste(before, before, pairs[0].target.bbox)
    once = Image.composite(plain, target, mask.mask)
    assert np.array_equal(np.asarray(masked), np.asarray(Image.composite(once, target, mask.mask)))
    assert changed(masked, plain).any()  # the mask is not all face


def test_a_parser_that_sees_no_face_leaves_the_image_as_it_was(sd15_engine):
    """BiSeNet with a zero output layer labels everything background (class 0): the swap happens and is then
    masked away entirely."""
    import copy
    from dataclasses import replace

    import torch

    masked = masked_stage(sd15_engine)
    blind = copy.deepcopy(masked.mask_parser)
    torch.nn.init.zeros_(blind.conv_out.conv_out.weight)
    target = faces_image((FEMALE, LEFT))
    result, pairs, _ = replace(masked, mask_parser=blind).apply(target, seed=1)
    assert pairs and not changed(target, result).any()


def test_face_mask_needs_bisenet_and_refuses_reactors_failing_order(tmp_path):
    from engine.faceswap.models import FaceSwapModels
    from engine.resources.catalog import ModelCatalog

    with pytest.raises(NotFoundError, match=r"args\[21\]: face mask correction needs facexlib's "
                                            r"parsing_bisenet.pth .*--only reactor") as missing:
        FaceSwapModels(ModelCatalog(tmp_path), "cpu").mask_parser()
    assert str(tmp_path) not in str(missing.value)  # a client must not learn the server's paths
    with pytest.raises(RequestError, match=r"args\[21\]: .*restore first true or scale 1"):
        parse_reactor_args({"reactor": {"args": reactor_args(mask_face=True, upscaler="Lanczos", upscaler_scale=2,
                                                             restore_first=False)}})
    assert parse_reactor_args({"reactor": {"args": reactor_args(mask_face=True, upscaler="Lanczos",
                                                                upscaler_scale=2)}}).mask_face


def test_unknown_swap_model_lists_the_installed_ones(sd15_engine):
    with pytest.raises(NotFoundError, match=r"args\[4\]: no swap model named 'inswapper_256.onnx'.*"
                                            r"installed: 'inswapper_128.onnx'"):
        stage(sd15_engine, model="inswapper_256.onnx")
    # ReActor joins the name onto models/insightface, so clients also send a full path.
    assert stage(sd15_engine, model="C:\\webui\\models\\insightface\\inswapper_128.onnx").swapper is not None


def test_unknown_upscaler_and_restorer_name_their_args(sd15_engine):
    with pytest.raises(NotFoundError, match=r"args\[8\]: no upscaler named 'Nope'"):
        stage(sd15_engine, upscaler="Nope")
    with pytest.raises(NotFoundError, match=r"args\[5\]: no face restorer named 'Nope'"):
        stage(sd15_engine, face_restorer="Nope")


def test_reactor_endpoints(sd15_engine):
    assert sd15_engine.handle("GET", "reactor/models", {}) == {"models": ["inswapper_128.onnx"]}
    upscalers = sd15_engine.handle("GET", "reactor/upscalers", {})["upscalers"]
    assert upscalers[:3] == ["None", "Lanczos", "Nearest"]


INPAINT = {"prompt": "a face", "seed": 3, "steps": 2, "width": SIZE, "height": SIZE, "sampler_name": "Euler",
           "denoising_strength": 0.5, "mask_blur": 0, "inpaint_full_res": False}


def test_img2img_payload_swaps_the_face_the_overlay_keeps(sd15_engine):
    """End to end: an inpainting request whose mask leaves the painted face alone, so the finished image still
    has it; with ReActor's args the face area differs from the same request without them, and only there.
    (This relies on the swap running after the paste-back, a documented difference: A1111 would cover a swap
    outside the mask with the original again.)"""
    target = faces_image((FEMALE, LEFT))
    mask = Image.new("L", (SIZE, SIZE))
    mask.paste(255, (256, 256, SIZE, SIZE))
    payload = {**INPAINT, "init_images": [b64(target)], "mask": b64(mask)}
    plain = sd15_engine.img2img(payload).images[0]
    swapped = sd15_engine.img2img({**payload, "alwayson_scripts": {"reactor": {"args": reactor_args()}}}).images[0]
    diff = changed(plain, swapped)
    assert diff[40:110, 40:110].sum() > 100 and diff.sum() == diff[40:110, 40:110].sum()


def test_txt2img_runs_the_swap_on_each_image(sd15_engine):
    """txt2img's images (random-weight noise) go through the stage: a face number beyond the ones the tiny
    detector finds there is reported per image."""
    payload = {"prompt": "noise", "seed": 3, "steps": 2, "width": 64, "height": 64, "batch_size": 2,
               "alwayson_scripts": {"reactor": {"args": reactor_args(faces_index="99")}}}
    warnings = sd15_engine.txt2img(payload).warnings
    assert [note.split(" (")[0] for note in warnings if note.startswith("ReActor")] == [
        "ReActor, image 1: no target face 99", "ReActor, image 2: no target face 99"]


def test_request_errors_come_before_generation(sd15_engine):
    payload = {"prompt": "x", "steps": 2, "width": 64, "height": 64}
    with pytest.raises(RequestError, match=r"args\[0\]: ReActor needs a source face"):
        sd15_engine.txt2img({**payload, "alwayson_scripts": {"reactor": {"args": [None, True]}}})
    with pytest.raises(NotFoundError, match=r"args\[4\].*installed: 'inswapper_128.onnx'"):
        sd15_engine.txt2img({**payload, "alwayson_scripts": {"reactor": {"args": reactor_args(model="x.onnx")}}})


def test_reactor_image_endpoint_swaps_with_reactors_body_fields(sd15_engine):
    """`POST /reactor/image` with ReActor's field names runs the same stage as the script args."""
    target = faces_image((FEMALE, LEFT), (MALE, RIGHT))
    body = {"source_image": b64(SOURCE), "target_image": "data:image/png;base64," + b64(target), "face_index": [1]}
    answer = sd15_engine.handle("POST", "reactor/image", body)
    result = Image.open(io.BytesIO(base64.b64decode(answer["image"])))
    expected = stage(sd15_engine, faces_index="1").apply(target, seed=0)[0]
    assert np.array_equal(np.asarray(result.convert("RGB")), np.asarray(expected))
    assert changed(target, expected).any()


@pytest.mark.parametrize(("body", "message"), [
    ({"face_index": [0]}, r"^source_image: ReActor needs a source face"),
    ({"source_image": "SOURCE", "model": "nope.onnx"}, r"^model: no swap model named 'nope.onnx'"),
    ({"source_image": "SOURCE", "mask_face": 1, "upscaler": "Lanczos", "scale": 2, "restore_first": 0},
     r"^mask_face: face mask correction with upscaling before restoring"),
    ({"source_image": "SOURCE", "save_to_file": 1}, r"^save_to_file: the worker does not write files"),
])
def test_reactor_image_errors_name_the_body_field(sd15_engine, body, message):
    body = {key: b64(SOURCE) if value == "SOURCE" else value for key, value in body.items()}
    with pytest.raises(RequestError, match=message):
        sd15_engine.handle("POST", "reactor/image", {"target_image": b64(faces_image()), **body})
