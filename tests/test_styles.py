"""Prompt styles as A1111 v1.10 reads and applies them (`modules/styles.py`, `StableDiffusionProcessing.
setup_prompts`): styles.csv files, `{prompt}` placement, unknown names, hires prompts, before extra networks."""

import json

import pytest

from engine import Engine
from engine.prompts.styles import StyleDatabase, merge_prompts, read_styles_csv, styles_file_candidates
from engine.settings import Settings
from engine.translate import to_img2img_plan, to_plan
from engine.wire.img2img import Img2ImgRequest
from engine.wire.txt2img import Txt2ImgRequest


STYLES_CSV = (
    "\ufeffname,prompt,negative_prompt\n"
    "Cinematic,\"cinematic still of {prompt}, film grain\",\"cartoon, {prompt}\"\n"
    "Sharp,\"sharp focus, 8k\",blurry\n"
    "# divider,,\n"
    "Tagged,\"<lora:tiny_style:0.7>, oil paint\",\n"
)


@pytest.fixture
def styles(tmp_path) -> StyleDatabase:
    path = tmp_path / "styles.csv"
    path.write_text(STYLES_CSV, encoding="utf-8")
    return StyleDatabase([str(path)])


@pytest.mark.parametrize(
    ("style", "prompt", "merged"),
    [
        ("cinematic still of {prompt}", "a fox", "cinematic still of a fox"),
        ("sharp focus", "a fox", "a fox, sharp focus"),
        ("sharp focus", "  a fox ", "a fox, sharp focus"),
        ("", "  a fox ", "a fox"),  # an empty (or unknown) style still trims, as in A1111
        ("sharp focus", "", "sharp focus"),
        ("{prompt} and {prompt}", "x", "x and x"),
    ],
)
def test_merge_rules(style, prompt, merged):
    assert merge_prompts(style, prompt) == merged


def test_csv_reading_skips_comments_and_keeps_order(styles):
    assert [entry["name"] for entry in styles.listing()] == ["Cinematic", "Sharp", "Tagged"]
    assert styles.listing()[1] == {"name": "Sharp", "prompt": "sharp focus, 8k", "negative_prompt": "blurry"}


def test_old_name_text_format_is_read(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("name,text\nPainted,oil painting of {prompt}\n", encoding="utf-8")
    (style,) = read_styles_csv(path)
    assert (style.prompt, style.negative_prompt) == ("oil painting of {prompt}", "")


def test_styles_apply_in_order_to_prompt_and_negative(styles):
    prompt, negative = styles.apply("a fox", "ugly", ["Cinematic", "Sharp"])
    assert prompt == "cinematic still of a fox, film grain, sharp focus, 8k"
    assert negative == "cartoon, ugly, blurry"


def test_files_are_reread_when_they_change(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text("name,prompt,negative_prompt\nA,one,\n", encoding="utf-8")
    database = StyleDatabase([str(path)])
    assert [s["name"] for s in database.listing()] == ["A"]
    path.write_text("name,prompt,negative_prompt\nA,one,\nB,two,\n", encoding="utf-8")
    import os

    os.utime(path, ns=(1, 2_000_000_000_000_000_000))
    assert [s["name"] for s in database.listing()] == ["A", "B"]


def test_default_places_are_beside_and_in_the_models_folder(tmp_path):
    models = tmp_path / "webui" / "models"
    assert styles_file_candidates(models, None) == [
        str(tmp_path / "webui" / "styles.csv"),
        str(models / "styles.csv"),
    ]
    assert styles_file_candidates(models, "/a/styles.csv, /b/*.csv") == ["/a/styles.csv", "/b/*.csv"]


def test_wildcards_load_every_matching_file(tmp_path):
    (tmp_path / "one.csv").write_text("name,prompt\nOne,1\n", encoding="utf-8")
    (tmp_path / "two.csv").write_text("name,prompt\nTwo,2\n", encoding="utf-8")
    assert [s["name"] for s in StyleDatabase([str(tmp_path / "*.csv")]).listing()] == ["One", "Two"]


def test_plan_has_styled_prompts_and_warns_about_placeholders(styles):
    request = Txt2ImgRequest.parse(
        {"prompt": "a fox", "negative_prompt": "ugly", "styles": ["Cinematic", "string", "None"]}
    )
    plan = to_plan(request, Settings(), styles=styles)
    assert plan.prompts == ("cinematic still of a fox, film grain",)
    assert plan.negative_prompts == ("cartoon, ugly",)
    assert [w for w in plan.warnings if w.startswith("styles:")] == [
        "styles: no style named 'string'; skipped",
        "styles: no style named 'None'; skipped",
    ]


def test_styles_are_applied_before_extra_networks_are_parsed(styles):
    plan = to_plan(Txt2ImgRequest.parse({"prompt": "a fox", "styles": ["Tagged"]}), Settings(), styles=styles)
    assert plan.prompts == ("a fox, , oil paint",)
    assert [(tag.kind, tag.positional) for tag in plan.extra_networks] == [("lora", ("tiny_style", "0.7"))]


def test_hires_prompt_gets_the_styles_too(styles):
    payload = {"prompt": "a fox", "styles": ["Sharp"], "enable_hr": True, "denoising_strength": 0.5}
    plan = to_plan(Txt2ImgRequest.parse({**payload, "hr_prompt": "a wolf"}), Settings(), styles=styles)
    assert plan.hires.prompts == ("a wolf, sharp focus, 8k",)
    same = to_plan(Txt2ImgRequest.parse(payload), Settings(), styles=styles)
    assert same.hires.prompts == same.prompts == ("a fox, sharp focus, 8k",)


def test_per_image_prompts_and_img2img(styles, tmp_path):
    from PIL import Image

    from engine.imaging.png import png_base64

    request = Img2ImgRequest.parse({
        "prompt": ["one", "two"], "batch_size": 2, "styles": ["Sharp"],
        "init_images": [png_base64(Image.new("RGB", (8, 8)), None)], "width": 64, "height": 64,
    })
    plan = to_img2img_plan(request, Settings(), styles=styles)
    assert plan.prompts == ("one, sharp focus, 8k", "two, sharp focus, 8k")


def test_prompt_styles_endpoint_and_a_styled_generation(demo_models, tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(STYLES_CSV, encoding="utf-8")
    engine = Engine.from_models_dir(demo_models, device="cpu", default_checkpoint="tiny-sd15",
                                    styles_file=str(path))
    listed = engine.handle("GET", "sdapi/v1/prompt-styles", {})
    assert listed[0] == {"name": "Cinematic", "prompt": "cinematic still of {prompt}, film grain",
                         "negative_prompt": "cartoon, {prompt}"}
    body = engine.handle("POST", "sdapi/v1/txt2img", {
        "prompt": "a fox", "styles": ["Sharp"], "seed": 3, "steps": 2, "width": 64, "height": 64,
    })
    info = json.loads(body["info"])
    # The styled prompt is what ran and what the infotext shows; `styles` and `parameters` echo the request.
    assert info["prompt"] == "a fox, sharp focus, 8k" and info["styles"] == ["Sharp"]
    assert info["infotexts"][0].startswith("a fox, sharp focus, 8k\nNegative prompt: blurry\n")
    assert body["parameters"]["prompt"] == "a fox" and "warnings" not in body
