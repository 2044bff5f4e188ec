"""Face restorer files: spandrel loads the demo restorers as GFPGAN / CodeFormer, facexlib's own loader reads
the demo detector, released sizes go through the libraries' own paths, and what the demo detector calls a face."""

import shutil

import numpy as np
import pytest
import spandrel
import torch
from PIL import Image

from engine import Engine
from engine.errors import NotFoundError, UnsupportedError
from engine.restore import demo
from engine.restore.face_models import parsenet_widths
from engine.restore.helper import FaceHelper
from engine.restore.networks import (
    RELEASED_GFPGAN,
    gfpgan_hyperparameters,
    load_restoration_net,
    restorer_registry,
)


def test_face_restorers_lists_what_is_installed_in_a1111s_shape(sd15_engine, demo_models):
    assert sd15_engine.handle("GET", "/sdapi/v1/face-restorers", {}) == [
        {"name": "CodeFormer", "cmd_dir": str(demo_models / "Codeformer")},
        {"name": "GFPGAN", "cmd_dir": str(demo_models / "GFPGAN")},
    ]


def test_missing_files_are_named(tmp_path, demo_models):
    engine = Engine.from_models_dir(tmp_path, device="cpu")
    assert engine.handle("GET", "/sdapi/v1/face-restorers", {}) == []
    with pytest.raises(NotFoundError, match=r"needs its weights \(GFPGANv1.4.pth\).*installed: \(none"):
        engine.restorers.get("GFPGAN")
    (tmp_path / "GFPGAN").mkdir()
    shutil.copy(demo_models / demo.GFPGAN_FILE, tmp_path / demo.GFPGAN_FILE)
    with pytest.raises(NotFoundError, match="needs detection_Resnet50_Final.pth and parsing_parsenet.pth"):
        engine.restorers.get("GFPGAN")


def test_spandrel_loads_the_demo_codeformer_as_codeformer(demo_models):
    descriptor = spandrel.ModelLoader(registry=restorer_registry()).load_from_file(demo_models / demo.CODEFORMER_FILE)
    assert descriptor.architecture.id == "CodeFormer"
    assert descriptor.model.dim_embd == demo.TINY_CODEFORMER["dim_embd"]


def test_the_demo_gfpgan_is_a_narrow_gfpgan_spandrel_detects(demo_models):
    descriptor = load_restoration_net(demo_models / demo.GFPGAN_FILE, "GFPGAN", torch.device("cpu"))
    assert descriptor.architecture.id == "GFPGAN"
    assert type(descriptor.model).__name__ == "GFPGANv1Clean"
    assert gfpgan_hyperparameters(descriptor.model.state_dict()) == demo.TINY_GFPGAN


def test_a_released_size_gfpgan_reads_as_spandrels_own_hyperparameters():
    from spandrel.architectures.GFPGAN import GFPGAN

    released = GFPGAN().state_dict()  # spandrel's class defaults are the released model's
    assert gfpgan_hyperparameters(released) == RELEASED_GFPGAN


def test_a_released_size_parsenet_reads_back_facexlibs_layers():
    from facexlib.parsing.parsenet import ParseNet

    released = ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict()
    widths = parsenet_widths(released)
    assert widths["base_ch"] == 64 and widths["ch_range"][1] == 256 and widths["res_depth"] == 10
    ParseNet(in_size=512, out_size=512, **widths).load_state_dict(released, strict=True)


def test_a_file_of_another_architecture_is_refused(demo_models):
    with pytest.raises(UnsupportedError, match="ESRGAN_4x.pth: is a ESRGAN model, not CodeFormer"):
        load_restoration_net(demo_models / "ESRGAN" / "ESRGAN_4x.pth", "CodeFormer", torch.device("cpu"))


def test_facexlibs_own_loader_reads_the_demo_detector_offline(demo_models):
    from facexlib.detection import init_detection_model

    detector = init_detection_model("retinaface_resnet50", device="cpu",
                                    model_rootpath=str(demo_models / "GFPGAN"))
    assert detector.model_name == "retinaface_resnet50"


def detected_boxes(engine, image):
    helper = FaceHelper(engine.restorers.get("GFPGAN").face_models)
    helper.read_image(np.ascontiguousarray(np.asarray(image)[:, :, ::-1]))
    helper.get_face_landmarks_5(only_center_face=False, resize=640, eye_dist_threshold=5)
    return [box[:4] for box in helper.det_faces]


@pytest.mark.parametrize("corner", [(10, 12), (41, 60)])
def test_the_demo_detector_sees_one_face_per_white_square_of_an_eighth_of_the_short_side(sd15_engine, corner):
    pixels = np.full((128, 96, 3), 40, np.uint8)
    side = 96 // 8
    x, y = corner
    pixels[y : y + side, x : x + side] = 255
    boxes = detected_boxes(sd15_engine, Image.fromarray(pixels))
    assert len(boxes) == 1
    x1, y1, x2, y2 = boxes[0]
    assert x2 - x1 == pytest.approx(0.4 * 96, abs=0.1) and y2 - y1 == pytest.approx(0.4 * 96, abs=0.1)
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    assert np.abs(centre - (np.array(corner) + side / 2)).max() <= 96 / 24


def test_grey_is_not_a_face_and_restoring_no_face_returns_the_image(sd15_engine):
    pixels = np.full((96, 96, 3), 40, np.uint8)
    pixels[30:42, 30:42] = 190  # below the demo detector's brightness of 200
    image = Image.fromarray(pixels)
    result = sd15_engine.restorers.get("GFPGAN").restore_faces(image)
    assert result.faces == ()
    assert result.image.tobytes() == image.tobytes()


def test_without_spandrel_extra_arches_codeformer_is_not_offered(sd15_engine, monkeypatch):
    import dataclasses

    from engine.restore import registry

    missing = dataclasses.replace(registry.RESTORER_MODELS["CodeFormer"], package="no_such_package_here")
    monkeypatch.setitem(registry.RESTORER_MODELS, "CodeFormer", missing)
    assert sd15_engine.restorers.installed() == ["GFPGAN"]
    with pytest.raises(NotFoundError, match="needs the no_such_package_here package"):
        sd15_engine.restorers.resolve("CodeFormer")


def test_a_damaged_restorer_file_is_one_clear_error(tmp_path, demo_models):
    from engine.errors import ModelFileError

    (tmp_path / "GFPGAN").mkdir()
    for file in (demo.DETECTOR_FILE, demo.PARSER_FILE):
        (tmp_path / file).symlink_to(demo_models / file)
    data = (demo_models / demo.GFPGAN_FILE).read_bytes()
    (tmp_path / demo.GFPGAN_FILE).write_bytes(data[: len(data) // 2])
    engine = Engine.from_models_dir(tmp_path, device="cpu")
    with pytest.raises(ModelFileError, match="GFPGAN.*GFPGANv1.4.pth"):
        engine.restorers.get("GFPGAN")
