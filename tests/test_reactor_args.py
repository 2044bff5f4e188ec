"""ReActor's positional args and its face choice, without models: parsing, defaults, refusals, left-to-right
numbering and the gender filters."""

from dataclasses import dataclass

import numpy as np
import pytest

from engine.errors import RequestError, UnsupportedError
from engine.faceswap.args import ARG_DEFAULTS, parse_reactor_args
from engine.faceswap.selection import check_index_counts, pair_faces, source_faces_for


def api_example_args(**changes):
    """The 30 args of ReActor's `example/api_example.py` (face model source switched to the image one)."""
    args = ["c291cmNl", True, "0", "0", "C:\\stable-diffusion-webui\\models\\insightface\\inswapper_128.onnx",
            "CodeFormer", 1, True, "4x_NMKD-Superscale-SP_178000_G", 1.5, 1, False, True, 1, 0, 0, False, 0.8,
            False, False, "CUDA", False, 0, "elena.safetensors", "C:\\PATH_TO_FACES_IMAGES", None, True, True,
            0.6, 2]
    names = [name for name, _ in ARG_DEFAULTS]
    args += [None] * (len(names) - len(args))  # the 31st, selected_tab, came after that example
    for name, value in changes.items():
        args[names.index(name)] = value
    return {"reactor": {"args": args}}


def test_api_example_args_land_in_their_fields():
    args = parse_reactor_args(api_example_args(source_faces_index="1, 0", faces_index="0,2", gender_target=2))
    assert args.source_image == "c291cmNl"
    assert args.source_faces_index == (1, 0) and args.faces_index == (0, 2)
    assert args.model.endswith("inswapper_128.onnx")
    assert (args.face_restorer, args.restorer_visibility, args.codeformer_weight) == ("CodeFormer", 1.0, 0.8)
    assert (args.upscaler, args.upscaler_scale, args.upscaler_visibility) == ("4x_NMKD-Superscale-SP_178000_G", 1.5, 1)
    assert args.restore_first and args.upscale_force
    assert (args.gender_source, args.gender_target, args.device) == (0, 2, "CUDA")
    assert (args.det_thresh, args.det_maxnum) == (0.6, 2)
    assert args.face_model is None  # only read when the source is a face model


def test_missing_args_take_reactors_ui_defaults():
    args = parse_reactor_args({"ReActor": {"args": ["c291cmNl", True]}})
    assert args.source_faces_index == (0,) and args.faces_index == (0,)
    assert args.model is None  # the first installed model, chosen when resolved
    assert args.face_restorer == "CodeFormer" and args.restorer_visibility == 1.0  # A1111's first restorer
    assert args.upscaler is None and args.upscaler_scale == 1.0
    assert (args.det_thresh, args.det_maxnum, args.device) == (0.5, 0, "CPU")


@pytest.mark.parametrize("scripts", [None, {}, {"reactor": {"args": ["x", False]}}, {"reactor": {"args": []}},
                                     {"adetailer": {"args": []}}])
def test_absent_or_disabled_script_is_none(scripts):
    assert parse_reactor_args(scripts) is None


def test_swap_in_source_only_leaves_the_generated_image_alone():
    assert parse_reactor_args(api_example_args(swap_in_generated=False)) is None


def test_face_indices_are_parsed_as_reactor_parses_them():
    args = parse_reactor_args(api_example_args(source_faces_index=" ,x", faces_index="3, 1,a,"))
    assert args.source_faces_index == (0,) and args.faces_index == (3, 1)


def test_enabled_without_a_source_image_names_the_arg():
    with pytest.raises(RequestError, match=r"alwayson_scripts\.reactor\.args\[0\]: ReActor needs a source face"):
        parse_reactor_args({"reactor": {"args": [None, True]}})


def test_face_model_source_needs_a_face_model_name():
    with pytest.raises(RequestError, match=r"args\[23\]"):
        parse_reactor_args(api_example_args(select_source=1, face_model="None"))
    assert parse_reactor_args(api_example_args(select_source=1)).face_model == "elena.safetensors"


@pytest.mark.parametrize(("change", "position"), [
    ({"select_source": 2}, 22), ({"save_original": True}, 16),
    ({"source_images": ["c291cmNl"], "selected_tab": "tab_multiple"}, 25),
])
def test_unsupported_modes_are_refused_by_position(change, position):
    with pytest.raises(UnsupportedError, match=rf"args\[{position}\]"):
        parse_reactor_args(api_example_args(**change))


def test_source_images_count_only_on_reactors_multiple_sources_tab():
    # The single tab ignores the list (as ReActor's `process` does); a face model ignores both tabs.
    assert parse_reactor_args(api_example_args(source_images=["c291cmNl"])).source_image == "c291cmNl"
    assert parse_reactor_args(api_example_args(select_source=1, selected_tab="tab_multiple")) is not None
    # The multiple tab ignores args[0]: without a list ReActor has no source.
    with pytest.raises(RequestError, match=r"args\[25\]: .*tab_single"):
        parse_reactor_args(api_example_args(selected_tab="tab_multiple"))


def test_swap_in_source_is_refused_on_img2img_only():
    assert parse_reactor_args(api_example_args(swap_in_source=True)) is not None
    with pytest.raises(UnsupportedError, match=r"args\[11\]"):
        parse_reactor_args(api_example_args(swap_in_source=True), img2img=True)


@pytest.mark.parametrize(("change", "position", "accepted"), [
    ({"gender_target": 3}, 15, "2 \\(Male Only\\)"), ({"device": "TPU"}, 20, "CPU, CUDA"),
    ({"det_thresh": 2}, 28, "0.1 to 1"), ({"restorer_visibility": "much"}, 6, "0 to 1"),
])
def test_bad_values_name_the_arg_and_what_it_accepts(change, position, accepted):
    with pytest.raises(RequestError, match=rf"args\[{position}\]: must be .*{accepted}"):
        parse_reactor_args(api_example_args(**change))


def test_gender_radio_labels_are_accepted():
    assert parse_reactor_args(api_example_args(gender_source="Female Only")).gender_source == 1


@dataclass
class FakeFace:
    """Only what the selection reads: a box and insightface's gender (0 female, 1 male)."""

    x: float
    gender: int | None = None

    @property
    def bbox(self):
        return np.array([self.x, 0, self.x + 10, 10])


def test_faces_are_numbered_left_to_right_whatever_the_detection_order():
    right, left, middle = FakeFace(200), FakeFace(10), FakeFace(100)
    sources = source_faces_for([right, left, middle], [2], 0, "where")
    assert sources == [right]
    pairs, notes = pair_faces([middle], [middle, right, left], [0, 2], 0)
    assert [(pair.target, pair.target_index) for pair in pairs] == [(left, 0), (right, 2)] and not notes


def test_one_source_per_target_index_or_one_for_all():
    a, b = FakeFace(0), FakeFace(50)
    targets = [FakeFace(0), FakeFace(50)]
    pairs, _ = pair_faces([a, b], targets, [1, 0], 0)
    assert [(pair.source, pair.target_index) for pair in pairs] == [(a, 1), (b, 0)]
    pairs, _ = pair_faces([a], targets, [1, 0], 0)
    assert [pair.source for pair in pairs] == [a, a]
    with pytest.raises(RequestError, match="gives 2 source faces for 3 target faces"):
        check_index_counts([0, 1], [0, 1, 2], "where")


def test_target_gender_filter_skips_the_other_gender():
    woman, man = FakeFace(0, gender=0), FakeFace(50, gender=1)
    pairs, notes = pair_faces([FakeFace(0)], [woman, man], [0, 1], 1)  # female only
    assert [pair.target for pair in pairs] == [woman]
    assert notes == ["target face 1 skipped: not female"]
    pairs, _ = pair_faces([FakeFace(0)], [woman, man], [0, 1], 2)  # male only
    assert [pair.target for pair in pairs] == [man]


def test_source_gender_filter_drops_its_pairs():
    woman, man = FakeFace(0, gender=0), FakeFace(50, gender=1)
    sources = source_faces_for([woman, man], [0, 1], 2, "where")  # male only
    assert sources == [None, man]
    pairs, notes = pair_faces(sources, [FakeFace(0), FakeFace(9)], [0, 1], 0)
    assert [pair.target_index for pair in pairs] == [1] and "source gender filter" in notes[0]


def test_missing_faces():
    with pytest.raises(RequestError, match="no face found in the ReActor source image"):
        source_faces_for([], [0], 0, "where")
    with pytest.raises(RequestError, match="has 1 face.*no face 1"):
        source_faces_for([FakeFace(0)], [1], 0, "where")
    pairs, notes = pair_faces([FakeFace(0)], [FakeFace(0)], [3], 0)
    assert not pairs and notes == ["no target face 3 (1 found)"]
