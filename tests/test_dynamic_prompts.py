"""Dynamic Prompts and Simple wildcards: per-image prompts seeded as the extensions seed them.

The expected prompts come from the `dynamicprompts` library driven directly the way sd-dynamic-prompts drives
it (or from `random.Random` for Simple wildcards): these tests prove the request → seeds → generator wiring,
the per-image seeding and the request rewrite, not the library's parser, which is the library's own business.
"""

import random
from pathlib import Path

import pytest
from dynamicprompts.generators import CombinatorialPromptGenerator, RandomPromptGenerator
from dynamicprompts.wildcards import WildcardManager

from engine.errors import NotFoundError, RequestError, UnsupportedError
from engine.prompts.wildcards import wildcard_folder
from engine.settings import Settings
from engine.translate import to_img2img_plan, to_plan
from engine.wire.txt2img import Txt2ImgRequest


TEMPLATE = "a {cat|dog|fox|owl} in {2$$ and $$__colors__|__sub/shades__|gold|jade}, {1-3$$x|y|z}, {0.5::day|2::night}"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wildcard-models")
    (root / "wildcards" / "sub").mkdir(parents=True)
    (root / "wildcards" / "colors.txt").write_text("red\nblue\ngreen\n# a comment line\n")
    # A nested wildcard: a line of shades names another wildcard.
    (root / "wildcards" / "sub" / "shades.txt").write_text("light __colors__\ndark __colors__\n")
    return root


def plan(models, payload, **settings):
    return to_plan(Txt2ImgRequest.parse(payload), Settings(models_dir=models, **settings))


def dynamic(*args, key="Dynamic Prompts v2.17.1"):
    return {key: {"args": list(args)}}


def library_prompts(models, template, seed, count):
    """What sd-dynamic-prompts asks of the library: a generator seeded with the first seed, re-seeded per image."""
    generator = RandomPromptGenerator(WildcardManager(models / "wildcards"), seed=seed)
    return tuple(generator.generate(template, count, seeds=[seed + i for i in range(count)]))


def test_random_prompts_are_the_librarys_with_each_images_seed(models):
    payload = {"prompt": TEMPLATE, "negative_prompt": "{ugly|bad|__colors__}", "seed": 100, "batch_size": 2,
               "n_iter": 2, "alwayson_scripts": dynamic(True)}
    made = plan(models, payload)
    assert made.prompts == library_prompts(models, TEMPLATE, 100, 4)
    assert made.negative_prompts == library_prompts(models, "{ugly|bad|__colors__}", 100, 4)
    assert made.noise.seeds == (100, 101, 102, 103)
    assert len(set(made.prompts)) > 1  # the images really got different prompts
    assert all("{" not in prompt and "__" not in prompt for prompt in made.prompts)
    # Image i's prompt depends on its own seed alone: the request starting at seed 101 begins with image 1's.
    shifted = plan(models, {**payload, "seed": 101, "batch_size": 1, "n_iter": 1})
    assert shifted.prompts == made.prompts[1:2]


def test_same_seed_same_prompts_and_another_seed_others(models):
    payload = {"prompt": TEMPLATE, "seed": 7, "batch_size": 4, "alwayson_scripts": dynamic()}  # [] = enabled
    first, again = plan(models, payload), plan(models, payload)
    assert first.prompts == again.prompts
    assert plan(models, {**payload, "seed": 8}).prompts != first.prompts


def test_a_random_seed_is_fixed_before_the_prompts_are_drawn(models):
    made = plan(models, {"prompt": TEMPLATE, "seed": -1, "batch_size": 2, "alwayson_scripts": dynamic(True)})
    assert made.prompts == library_prompts(models, TEMPLATE, made.noise.seeds[0], 2)


def test_extra_networks_in_generated_prompts_are_read_after_generation(models):
    made = plan(models, {"prompt": "{<lora:style:0.5>|<lora:style:0.5>} x", "seed": 1,
                         "alwayson_scripts": dynamic(True)})
    assert made.prompts_as_written == ("<lora:style:0.5> x",)
    assert [network.name for network in made.loras] == ["style"]


def test_disabled_script_leaves_the_braces(models):
    made = plan(models, {"prompt": "{a|b}", "seed": 1, "alwayson_scripts": dynamic(False)})
    assert made.prompts == ("{a|b}",)


def test_combinatorial_makes_every_combination_crossed_with_the_negatives(models):
    made = plan(models, {"prompt": "{a|b} {c|d}", "negative_prompt": "{x|y}", "seed": 5,
                         "alwayson_scripts": dynamic(True, True)})
    expected = CombinatorialPromptGenerator(WildcardManager(models / "wildcards")).generate("{a|b} {c|d}", None)
    assert made.prompts == tuple(prompt for prompt in expected for _ in range(2))
    assert made.negative_prompts == ("x", "y") * 4
    assert made.n_iter == 8 and made.noise.seeds == tuple(range(5, 13))
    limited = plan(models, {"prompt": "{a|b} {c|d}", "seed": 5,
                            "alwayson_scripts": dynamic(True, True, 1, *[False] * 12, 3)})
    assert limited.prompts == tuple(expected[:3])


def test_combinatorial_beyond_the_image_limit_is_an_error(models):
    with pytest.raises(RequestError, match=r"args\[1\]: combinatorial generation made 8 prompts"):
        plan(models, {"prompt": "{a|b} {c|d} {e|f}", "alwayson_scripts": dynamic(True, True)}, max_batch_images=4)


def test_variation_seed_freezes_the_prompt_and_fixed_seed_fixes_both(models):
    frozen = plan(models, {"prompt": TEMPLATE, "seed": 3, "subseed_strength": 0.5, "batch_size": 3,
                           "alwayson_scripts": dynamic(True)})
    assert len(set(frozen.prompts)) == 1
    assert frozen.prompts[0] == RandomPromptGenerator(WildcardManager(models / "wildcards"), seed=3).generate(
        TEMPLATE, 1)[0]
    fixed = plan(models, {"prompt": TEMPLATE, "seed": 3, "batch_size": 3,
                          "alwayson_scripts": dynamic(True, False, 1, *[False] * 7, True)})
    assert fixed.noise.seeds == (3, 3, 3)
    assert fixed.prompts == library_prompts(models, TEMPLATE, 3, 1) * 3


def test_hires_prompt_equal_to_the_prompt_follows_the_generated_prompts(models):
    payload = {"prompt": TEMPLATE, "seed": 4, "batch_size": 2, "enable_hr": True, "denoising_strength": 0.5,
               "hr_upscaler": "Latent", "alwayson_scripts": dynamic(True)}
    followed = plan(models, {**payload, "hr_prompt": TEMPLATE})
    assert followed.hires.prompts == followed.prompts
    kept = plan(models, {**payload, "hr_prompt": "a {b|c}"})
    assert kept.hires.prompts == ("a {b|c}", "a {b|c}")  # the extension leaves another hires prompt alone


def test_template_infotext_only_with_the_extensions_option(models):
    payload = {"prompt": "{a|b}", "negative_prompt": "{c|d}", "seed": 1, "alwayson_scripts": dynamic(True)}
    assert not any(key.endswith("Template") for key, _ in plan(models, payload).infotext_extra)
    written = plan(models, {**payload, "override_settings": {"dp_write_raw_template": True}})
    assert ("Template", "{a|b}") in written.infotext_extra
    assert ("Negative Template", "{c|d}") in written.infotext_extra


@pytest.mark.parametrize(("position", "name"), [(3, "Magic prompt"), (4, "feeling lucky"), (5, "Attention"),
                                                (13, "Jinja2"), (14, "Don't generate images")])
def test_features_needing_models_or_network_are_refused_naming_the_arg(models, position, name):
    args = [True, *[False] * 17]
    args[position] = True
    with pytest.raises(UnsupportedError, match=rf"Dynamic Prompts v2.17.1\.args\[{position}\]: .*{name}"):
        plan(models, {"prompt": "{a|b}", "alwayson_scripts": dynamic(*args)})


def test_unknown_wildcard_is_an_error_naming_the_field_and_the_files(models):
    with pytest.raises(NotFoundError, match=r"^prompt: no wildcard file for __animals__ .*'colors', 'sub/shades'"):
        plan(models, {"prompt": "a __animals__", "alwayson_scripts": dynamic(True)})
    with pytest.raises(NotFoundError, match=r"^negative_prompt: no wildcard file for __bad__"):
        plan(models, {"prompt": "a", "negative_prompt": "__bad__", "alwayson_scripts": dynamic(True)})


def test_versionless_title_and_img2img(models):
    from PIL import Image

    from engine.imaging.png import png_base64
    from engine.wire.img2img import Img2ImgRequest

    request = Img2ImgRequest.parse({"prompt": TEMPLATE, "seed": 9, "batch_size": 2,
                                    "init_images": [png_base64(Image.new("RGB", (64, 64)), "")],
                                    "alwayson_scripts": dynamic(True, key="Dynamic Prompts")})
    made = to_img2img_plan(request, Settings(models_dir=models))
    assert made.prompts == library_prompts(models, TEMPLATE, 9, 2)


def test_simple_wildcards_draw_each_image_from_its_seed(models):
    lines = (models / "wildcards" / "colors.txt").read_text().splitlines()
    made = plan(models, {"prompt": "a __colors__ cat", "negative_prompt": "no __colors__", "seed": 50,
                         "batch_size": 3, "alwayson_scripts": {"Simple wildcards": {"args": []}}})
    assert made.prompts == tuple(f"a {random.Random(50 + i).choice(lines)} cat" for i in range(3))
    assert made.negative_prompts == tuple(f"no {random.Random(50 + i).choice(lines)}" for i in range(3))
    assert ("Wildcard prompt", "a __colors__ cat") in made.infotext_extra
    assert ("Wildcard negative prompt", "no __colors__") in made.infotext_extra
    same = plan(models, {"prompt": "a __colors__ cat", "seed": 50, "batch_size": 3,
                         "override_settings": {"wildcards_same_seed": True},
                         "alwayson_scripts": {"Simple wildcards": {"args": []}}})
    assert set(same.prompts) == {f"a {random.Random(50).choice(lines)} cat"}


def test_simple_wildcards_unknown_name_is_an_error_but_plain_words_stay(models):
    made = plan(models, {"prompt": "snake_case__word", "alwayson_scripts": {"Simple wildcards": {}}})
    assert made.prompts == ("snake_caseword",)  # the script drops an unclosed "__" and keeps the words
    with pytest.raises(NotFoundError, match=r"^prompt: no wildcard file for __animals__"):
        plan(models, {"prompt": "a __animals__", "alwayson_scripts": {"Simple wildcards": {}}})
    with pytest.raises(NotFoundError, match="__../secret__"):  # never read outside the wildcards folder
        plan(models, {"prompt": "a __../secret__", "alwayson_scripts": {"Simple wildcards": {}}})


def test_wildcard_folder_setting_and_a1111_extension_folders(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    assert wildcard_folder(models) == models / "wildcards"
    extension = tmp_path / "extensions" / "sd-dynamic-prompts" / "wildcards"
    extension.mkdir(parents=True)
    assert wildcard_folder(models) == extension.resolve()
    (models / "wildcards").mkdir()
    assert wildcard_folder(models) == models / "wildcards"
    assert wildcard_folder(models, tmp_path / "mine") == tmp_path / "mine"
    assert Settings.from_env({"WILDCARDS_DIR": str(tmp_path / "mine")}).wildcards_dir == tmp_path / "mine"


def test_wildcards_dir_setting_points_elsewhere(models, tmp_path):
    (tmp_path / "animals.txt").write_text("heron\n")
    made = plan(models, {"prompt": "a __animals__", "alwayson_scripts": dynamic(True)}, wildcards_dir=tmp_path)
    assert made.prompts == ("a heron",)


def test_generated_prompts_reach_the_images_and_infotext(demo_models, tmp_path):
    from engine import Engine

    (tmp_path / "colors.txt").write_text("red\nblue\ngreen\n")
    engine = Engine.from_models_dir(demo_models, device="cpu", default_checkpoint="tiny-sd15", wildcards_dir=tmp_path)
    payload = {"prompt": "a __colors__ {cat|dog}", "seed": 11, "steps": 2, "width": 64, "height": 64,
               "batch_size": 2, "override_settings": {"dp_write_raw_template": True},
               "alwayson_scripts": dynamic(True)}
    result = engine.txt2img(payload)
    expected = RandomPromptGenerator(WildcardManager(tmp_path), seed=11).generate(
        "a __colors__ {cat|dog}", 2, seeds=[11, 12])
    for infotext, prompt in zip(result.infotexts, expected, strict=True):
        assert infotext.startswith(prompt + "\n")
        assert "Template: a __colors__ {cat|dog}" in infotext
