"""`restore_faces`, `face_restoration_model` and `code_former_weight` → the plan, from the request, its
override_settings and POST /options, with A1111's defaults. No models needed."""

import pytest

from engine import Engine
from engine.errors import RequestError
from engine.plan import FaceRestorationPlan
from engine.settings import Settings
from engine.translate import to_plan
from engine.wire.txt2img import Txt2ImgRequest


SETTINGS = Settings(default_checkpoint="tiny-sd15")


def plan(payload, defaults=None):
    return to_plan(Txt2ImgRequest.parse({"prompt": "x", **payload}), SETTINGS, defaults)


def test_a1111s_defaults_codeformer_at_half_weight():
    assert plan({"restore_faces": True}).face_restoration == FaceRestorationPlan("CodeFormer", 0.5)


@pytest.mark.parametrize("restore_faces", [None, False])
def test_off_by_default(restore_faces):
    assert plan({"restore_faces": restore_faces}).face_restoration is None


def test_override_settings_pick_the_model_and_weight():
    overrides = {"face_restoration_model": "GFPGAN", "code_former_weight": 0.8}
    assert plan({"restore_faces": True, "override_settings": overrides}).face_restoration == FaceRestorationPlan(
        "GFPGAN", 0.8
    )


def test_options_set_by_post_options_apply_and_restore_faces_none_reads_the_option(tmp_path):
    engine = Engine.from_models_dir(tmp_path, device="cpu")
    engine.handle("POST", "/sdapi/v1/options", {"face_restoration": True, "code_former_weight": 0.3})
    defaults = engine.options.for_request()
    assert plan({}, defaults).face_restoration == FaceRestorationPlan("CodeFormer", 0.3)
    # The request's own field wins over the option, as in A1111.
    assert plan({"restore_faces": False}, defaults).face_restoration is None
    listed = engine.handle("GET", "/sdapi/v1/options", {})
    assert listed["face_restoration"] is True and listed["face_restoration_model"] == "CodeFormer"


@pytest.mark.parametrize(("key", "value"), [
    ("code_former_weight", 1.5),
    ("code_former_weight", "0.5"),
    ("face_restoration", "yes"),
    ("face_restoration_model", ""),
])
def test_invalid_options_are_errors_naming_them(key, value):
    with pytest.raises(RequestError, match=f"override_settings.{key}"):
        plan({"restore_faces": True, "override_settings": {key: value}})


def test_adetailer_restore_face_plans_a_restoration_after_its_inpaint():
    unit = {"ad_model": "face_yolov8n.pt", "ad_restore_face": True}
    planned = plan({"override_settings": {"code_former_weight": 0.7},
                    "alwayson_scripts": {"ADetailer": {"args": [True, False, unit, {"ad_model": "b.pt"}]}}})
    assert planned.face_restoration is None
    restorations = [detailer.face_restoration for detailer in planned.detailers]
    assert restorations == [FaceRestorationPlan("CodeFormer", 0.7), None]
