"""seg_ofade20k / seg_ofcoco (OneFormer) on tiny random transformers folders, against transformers' own
`OneFormerProcessor` and `post_process_semantic_segmentation` (the reference we did not write)."""

import base64
import io
import socket
import types

import numpy as np
import pytest
import torch
from PIL import Image

from engine.control.api import detect
from engine.control.maps.annotators import ANNOTATORS, DOWNLOAD_FOLDER, AnnotatorStore
from engine.control.maps.demo import write_random_annotators
from engine.control.maps.oneformer import DATASETS, Dataset, OneFormerSegmenter, network_input, resized_shape
from engine.control.maps.segment_palettes import ADE20K_COLOURS, COCO_PANOPTIC_COLOURS
from engine.control.maps.semantic_drawing import draw_semantic
from engine.errors import NotFoundError


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("oneformer")
    write_random_annotators(root, names=("oneformer_ade20k", "oneformer_coco"))
    return root


def _image(height=64, width=96) -> np.ndarray:
    pixels = np.random.default_rng(3).integers(0, 255, (height, width, 3)).astype(np.uint8)
    pixels[10:40, 8:50] = (240, 200, 30)
    return pixels


def _reference(folder, model, image: np.ndarray):
    """transformers' processor inputs and semantic labels at the image's size (no resize: the short side is
    already the test size, the sides multiples of 32, so neither side pads)."""
    from transformers import CLIPTokenizer, OneFormerImageProcessor, OneFormerProcessor

    # class_info_file=None: the image processor then never looks for class metadata on the Hub.
    processor = OneFormerProcessor(
        image_processor=OneFormerImageProcessor(size={"shortest_edge": min(image.shape[:2]), "longest_edge": 2560},
                                                class_info_file=None),
        tokenizer=CLIPTokenizer.from_pretrained(folder, local_files_only=True), task_seq_length=77)
    inputs = processor(images=Image.fromarray(image), task_inputs=["semantic"], return_tensors="pt")
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"], task_inputs=inputs["task_inputs"])
    labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.shape[:2]])[0]
    return inputs, labels.numpy()


def test_network_inputs_and_labels_match_transformers(models_root):
    folder = models_root / DOWNLOAD_FOLDER / ANNOTATORS["oneformer_ade20k"].folder
    loaded = AnnotatorStore(models_root).get("oneformer_ade20k")
    image = _image()
    # The test size at the image's short side, so both sides see the same pixels.
    segmenter = OneFormerSegmenter(loaded.model, _tokenizer(folder), Dataset(64, 2560, ADE20K_COLOURS))

    inputs, expected = _reference(folder, loaded.model, image)
    pixels, resized = network_input(image, segmenter.dataset)
    got = segmenter.labels(image)

    assert resized == (64, 96)
    torch.testing.assert_close(pixels, inputs["pixel_values"], rtol=0, atol=1e-5)
    assert torch.equal(segmenter.task, inputs["task_inputs"])
    assert len(np.unique(expected)) >= 2  # a map with regions, not one class everywhere
    # The original resizes the mask logits before summing them, transformers the sums: borders may differ.
    assert (got == expected).mean() > 0.9


def _tokenizer(folder):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def _decode(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


def _b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(("module", "palette"), [("seg_ofade20k", ADE20K_COLOURS),
                                                 ("oneformer_coco", COCO_PANOPTIC_COLOURS)])
def test_detect_draws_the_palette_map_without_network(models_root, monkeypatch, module, palette):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    image = _image(64, 64)
    body = detect(types.SimpleNamespace(root=models_root), {
        "controlnet_module": module, "controlnet_input_images": [_b64(image)], "controlnet_processor_res": 64})
    drawn = _decode(body["images"][0])

    assert drawn.shape == (64, 64, 3)
    colours = {tuple(c) for c in drawn.reshape(-1, 3)}
    painted = [c for c in colours if c in set(palette)]
    assert painted  # class colours from the dataset's palette
    in_palette = np.isin(drawn.reshape(-1, 3).view([("", np.uint8)] * 3), np.array(painted, np.uint8).view(
        [("", np.uint8)] * 3)).mean()
    assert in_palette > 0.5


def test_segments_are_drawn_as_the_extension_draws_them():
    """Opaque palette colours on white; a hole-free region is outlined in white, one with a hole is not."""
    labels = np.zeros((64, 64), np.int64)
    labels[40:] = 3  # floor: no hole → polygon with a white outline
    labels[10:20, 10:20] = 12  # person: inside the wall, so the wall has a hole → painted as pixels
    drawn = draw_semantic(labels, ADE20K_COLOURS)

    assert tuple(drawn[30, 40]) == ADE20K_COLOURS[0]  # wall, away from any border
    assert tuple(drawn[55, 30]) == ADE20K_COLOURS[3]
    assert tuple(drawn[15, 15]) == ADE20K_COLOURS[12]
    assert tuple(drawn[40, 30]) == (255, 255, 255)  # the floor's outline on its top row
    assert tuple(drawn[38, 30]) == ADE20K_COLOURS[0]  # the outline is 1 pt (1.4 px) wide, anti-aliased
    assert tuple(drawn[0, 30]) == ADE20K_COLOURS[0]  # the wall has a hole: painted as pixels, no outline


def test_the_datasets_use_their_own_test_sizes_and_palettes():
    assert (DATASETS["ade20k"].min_size, DATASETS["ade20k"].max_size) == (640, 2560)
    assert (DATASETS["coco"].min_size, DATASETS["coco"].max_size) == (800, 1333)
    assert len(ADE20K_COLOURS) == 150 and len(COCO_PANOPTIC_COLOURS) == 133
    assert COCO_PANOPTIC_COLOURS[0] == (220, 20, 60)  # person, the first thing class
    # detectron2's ResizeShortestEdge: short side to the test size unless the long side would pass the maximum.
    assert resized_shape(512, 768, 640, 2560) == (640, 960)
    assert resized_shape(100, 1000, 800, 1333) == (133, 1333)


def test_a_missing_folder_names_it_and_the_download_group(tmp_path):
    with pytest.raises(NotFoundError, match=r"oneformer/oneformer_coco_swin_large.*annotator-oneformer_coco"):
        detect(types.SimpleNamespace(root=tmp_path), {"controlnet_module": "seg_ofcoco",
                                                      "controlnet_input_images": [_b64(_image())]})
