"""A1111 prompt syntax: attention, editing/alternation schedules, AND weights, extra-network tags.

Expected values come from A1111 v1.10 `modules/prompt_parser.py` (its doctests and header comment) and
`modules/extra_networks.py`, or are worked by hand from that code; weights are written as the float
products A1111 computes, in the order it multiplies them.
"""

import pytest

from engine.errors import RequestError
from engine.prompts import (
    ExtraNetworkTag,
    extract_extra_networks,
    get_prompt_schedule,
    parse_prompt_attention,
    split_composable,
)


R = 1.1  # (x)
S = 1 / 1.1  # [x]

SEED_POSITIVE = (
    "(8k, best quality, masterpiece, highly detailed:1.1),realistic photo of fantastic happy man,"
    "modern clothing,cinematic lightning,film grain,dynamic pose,bokeh,dof"
)
SEED_NEGATIVE = (
    "ng_deepnegative_v1_75t,(badhandv4:1.2),(worst quality:2),(low quality:2),(normal quality:2),lowres,"
    "(bad anatomy),(bad hands),((monochrome)),((grayscale)),(verybadimagenegative_v1.3:0.8),"
    "negative_hand-neg,badhandv4,nude,naked,(strabismus),cross-eye,heterochromia,((blurred))"
)
SEED_WATERCOLOR = "watercolor painting, vibrant, beautiful, painterly, detailed, textural, artistic"
SEED_DETAILER_NEGATIVE = (
    "(lowres, low quality, worst quality:1.2), (text:1.2), watermark, anime, photorealistic, 35mm film, "
    "deformed, glitch, low contrast, noisy"
)
SEED_PROMPTS = [SEED_POSITIVE, SEED_NEGATIVE, SEED_WATERCOLOR, SEED_DETAILER_NEGATIVE]


# --- attention -------------------------------------------------------------------------------------------

A1111_ATTENTION_DOCTESTS = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ["a ", 1.0],
            ["house", 1.5730000000000004],
            [" ", 1.1],
            ["on", 1.0],
            [" a ", 1.1],
            ["hill", 0.55],
            [", sun, ", 1.1],
            ["sky", 1.4641000000000006],
            [".", 1.1],
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), A1111_ATTENTION_DOCTESTS)
def test_attention_matches_a1111_doctests(text, expected):
    assert parse_prompt_attention(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(x:1.3)", [["x", 1.3]]),
        ("(x: 1.3 )", [["x", 1.3]]),
        ("((x))", [["x", 1.0 * R * R]]),
        ("[x]", [["x", S]]),
        ("[[x]]", [["x", 1.0 * S * S]]),
        ("(x:-1)", [["x", -1.0]]),
        # `(a:b)`: the colon is literal text, the group is a plain (x) group.
        ("(a:b)", [["a:b", R]]),
        # Unclosed: all round openers first, then square ones, to the end of the prompt.
        ("(a [b", [["a ", R], ["b", 1.0 * R * S]]),
        # A weighted close pops the innermost round bracket even across an open square one.
        ("(a [b:2) c", [["a ", 2.0], ["b", 2.0 * S], [" c", S]]),
        ("", [["", 1.0]]),
        ("()", [["", 1.0]]),
        ("a)b]", [["a)b]", 1.0]]),
        ("a:1.2)", [["a:1.2)", 1.0]]),
        ("a:b", [["a:b", 1.0]]),
        ("(a)(b:1.1)", [["ab", 1.1]]),
    ],
)
def test_attention_weights(text, expected):
    assert parse_prompt_attention(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\(x\\) \\[y\\] \\\\", [["(x) [y] \\", 1.0]]),
        ("a\\b", [["ab", 1.0]]),  # any other backslash is dropped
        ("a\\", [["a", 1.0]]),
        ("\\((x)", [["(", 1.0], ["x", R]]),
    ],
)
def test_attention_escapes(text, expected):
    assert parse_prompt_attention(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
        ("BREAK", [["", 1.0], ["BREAK", -1], ["", 1.0]]),
        ("a BREAK BREAK b", [["a", 1.0], ["BREAK", -1], ["", 1.0], ["BREAK", -1], ["b", 1.0]]),
        ("aBREAK b, a break b", [["aBREAK b, a break b", 1.0]]),
        # Inside brackets the marker's weight is multiplied too, so A1111's encoder no longer sees a BREAK.
        ("(a BREAK b)", [["a", R], ["BREAK", -1 * R], ["b", R]]),
    ],
)
def test_attention_break(text, expected):
    assert parse_prompt_attention(text) == expected


@pytest.mark.parametrize("text", ["(a:1.2.3)", "(a:.)", "x (y:1..)"])
def test_attention_weight_that_is_not_a_number_is_a_request_error(text):
    with pytest.raises(RequestError) as error:
        parse_prompt_attention(text)
    assert error.value.field == "prompt"


def test_attention_of_seed_prompts():
    assert parse_prompt_attention(SEED_POSITIVE) == [
        ["8k, best quality, masterpiece, highly detailed", 1.1],
        [SEED_POSITIVE.split(")", 1)[1], 1.0],
    ]
    assert parse_prompt_attention(SEED_NEGATIVE) == [
        ["ng_deepnegative_v1_75t,", 1.0],
        ["badhandv4", 1.2],
        [",", 1.0],
        ["worst quality", 2.0],
        [",", 1.0],
        ["low quality", 2.0],
        [",", 1.0],
        ["normal quality", 2.0],
        [",lowres,", 1.0],
        ["bad anatomy", R],
        [",", 1.0],
        ["bad hands", R],
        [",", 1.0],
        ["monochrome", 1.0 * R * R],
        [",", 1.0],
        ["grayscale", 1.0 * R * R],
        [",", 1.0],
        ["verybadimagenegative_v1.3", 0.8],
        [",negative_hand-neg,badhandv4,nude,naked,", 1.0],
        ["strabismus", R],
        [",cross-eye,heterochromia,", 1.0],
        ["blurred", 1.0 * R * R],
    ]
    assert parse_prompt_attention(SEED_WATERCOLOR) == [[SEED_WATERCOLOR, 1.0]]
    assert parse_prompt_attention(SEED_DETAILER_NEGATIVE) == [
        ["lowres, low quality, worst quality", 1.2],
        [", ", 1.0],
        ["text", 1.2],
        [", watermark, anime, photorealistic, 35mm film, deformed, glitch, low contrast, noisy", 1.0],
    ]


# --- editing and alternation -------------------------------------------------------------------------------

A1111_SCHEDULE_DOCTESTS = [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", [[step, "a" if step % 2 else "(b:1.1)"] for step in range(1, 11)]),
    ("[fe|]male", [[step, "female" if step % 2 else "male"] for step in range(1, 11)]),
    ("[fe|||]male", [[step, "female" if step % 4 == 1 else "male"] for step in range(1, 11)]),
]


@pytest.mark.parametrize(("prompt", "expected"), A1111_SCHEDULE_DOCTESTS)
def test_schedule_matches_a1111_doctests(prompt, expected):
    assert get_prompt_schedule(prompt, 10) == expected


def test_schedule_stale_a1111_doctest_follows_the_grammar():
    # A1111's docstring lists [[5, 'a  c'], [10, 'a {b|d{ c']] ("not handling this right now"), but its
    # grammar excludes "|" from plain text since alternation exists, so v1.10 cannot parse the prompt
    # and uses it literally.
    assert get_prompt_schedule("a [{b|d{:.5] c", 10) == [[10, "a [{b|d{:.5] c"]]


def test_schedule_of_a1111_header_example():
    prompt = (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
    )
    assert get_prompt_schedule(prompt, 100) == [
        [25, "fantasy landscape with a mountain and an oak in foreground shoddy"],
        [50, "fantasy landscape with a lake and an oak in foreground in background shoddy"],
        [60, "fantasy landscape with a lake and an oak in foreground in background masterful"],
        [75, "fantasy landscape with a lake and an oak in background masterful"],
        [100, "fantasy landscape with a lake and a christmas tree in background masterful"],
    ]


@pytest.mark.parametrize(
    ("prompt", "steps", "expected"),
    [
        ("a [b::3] c", 10, [[3, "a b c"], [10, "a  c"]]),
        ("[a|b]", 3, [[1, "a"], [2, "b"], [3, "a"]]),
        ("[[a:b:2]|c]", 4, [[1, "a"], [2, "c"], [3, "b"], [4, "c"]]),
        ("(a [b:3]:1.2)", 10, [[3, "(a :1.2)"], [10, "(a b:1.2)"]]),
        ("[a:b: 3 ]", 10, [[3, "a"], [10, "b"]]),
        ("[a:b:0]", 10, [[10, "b"]]),  # a step < 1 is not collected and `before` never applies
        ("[a:b:-1]", 10, [[10, "b"]]),
        ("[a:b:50]", 20, [[20, "a"]]),  # clamped to the last step
        ("[a:b:0.29]", 100, [[28, "a"], [100, "b"]]),  # int(0.29 * 100) = int(28.999999999999996)
        ("[a:b:1e1]", 20, [[10, "a"], [20, "b"]]),  # no "." -> an absolute step
        ("[a:b:1.e1]", 20, [[20, "a"]]),  # "." -> a fraction: 10 * 20, clamped
        ("[a:b:+2]", 10, [[2, "a"], [10, "b"]]),
        ("", 10, [[10, ""]]),
    ],
)
def test_schedule_editing(prompt, steps, expected):
    assert get_prompt_schedule(prompt, steps) == expected


@pytest.mark.parametrize(
    "prompt",
    [
        "a | b",  # "|" only exists inside [...]
        "(a|b)",
        "[a|b:3]",
        "[a:3] b\\",  # a backslash must escape something
        "[a:3] \\\nb",  # ... and not a newline
        "[a:b:\u0663]",  # lark's numbers are ASCII digits
        "[a:b:1.2.3]",
        "[a:b]",
        "\\[a:3\\]",  # escaped brackets are text (the backslashes stay for the attention parser)
    ],
)
def test_schedule_falls_back_to_the_literal_prompt(prompt):
    assert get_prompt_schedule(prompt, 10) == [[10, prompt]]


def test_schedule_closing_bracket_next_to_literal_brackets_is_a_construct():
    # lark may read `[a:3]]` either way (its choice depends on the hash seed); we take the construct.
    assert get_prompt_schedule("[a:3]]", 10) == [[3, "]"], [10, "a]"]]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a [b:.5] c", [[10, "a b c"]]),  # A1111 doctest: fractions below 1 address the first pass
        ("a [b:1.5] c", [[5, "a  c"], [10, "a b c"]]),  # A1111 doctest
        ("a [b:15] c", [[5, "a  c"], [10, "a b c"]]),  # whole numbers are offset by the first pass
        ("a [b:5] c", [[10, "a b c"]]),
    ],
)
def test_schedule_of_hires_pass(prompt, expected):
    assert get_prompt_schedule(prompt, 10, hires_steps=10) == expected


def test_schedule_of_hires_pass_uses_its_own_step_count():
    assert get_prompt_schedule("[a:b:1.5]", 20, hires_steps=4) == [[2, "a"], [4, "b"]]


@pytest.mark.parametrize("prompt", SEED_PROMPTS)
def test_schedule_of_seed_prompts_is_the_prompt(prompt):
    assert get_prompt_schedule(prompt, 20) == [[20, prompt]]
    assert get_prompt_schedule(prompt, 20, hires_steps=10) == [[10, prompt]]


def test_schedule_errors():
    with pytest.raises(RequestError, match="out of range"):
        get_prompt_schedule("[a:b:1e999]", 10)
    with pytest.raises(RequestError, match="nested"):
        get_prompt_schedule("[" * 250 + "a" + ":1]" * 250, 10)
    for steps in (0, -3, 2.5, None):
        with pytest.raises(RequestError):
            get_prompt_schedule("a", steps)
    with pytest.raises(RequestError):
        get_prompt_schedule("a", 10, hires_steps=0)


def test_schedule_of_deep_but_reasonable_nesting():
    prompt = "[" * 100 + "a" + ":1]" * 100
    assert get_prompt_schedule(prompt, 10) == [[1, ""], [10, "a"]]
    assert get_prompt_schedule("(" * 150 + "a" + ")" * 150, 10) == [[10, "(" * 150 + "a" + ")" * 150]]


# --- AND ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("a cat AND a dog:0.5", [("a cat", 1.0), (" a dog", 0.5)]),
        ("a AND b :  2 ", [("a", 1.0), (" b", 2.0)]),
        ("x:-1 AND y:+.5 AND z:2.", [("x", -1.0), (" y", 0.5), (" z", 2.0)]),
        ("ANDROID AND", [("ANDROID", 1.0), ("", 1.0)]),
        ("a and b", [("a and b", 1.0)]),
        ("x:1.2.3", [("x:1.2.3", 1.0)]),
        ("[a AND b:3]", [("[a", 1.0), (" b:3]", 1.0)]),
        ("a\nAND b", [("a", 1.0), (" b", 1.0)]),
    ],
)
def test_split_composable(prompt, expected):
    assert split_composable(prompt) == expected


@pytest.mark.parametrize("prompt", SEED_PROMPTS)
def test_split_composable_of_seed_prompts(prompt):
    assert split_composable(prompt) == [(prompt, 1.0)]


# --- extra networks ----------------------------------------------------------------------------------------


def test_extract_extra_networks_a1111_docstring_example():
    prompt, tags = extract_extra_networks(
        "1girl, <hypernet:agm:1.1> <extrasupernet:master:12:13:14> <hypernet:ray>"
    )
    assert prompt == "1girl,   "
    assert tags == [
        ExtraNetworkTag("hypernet", ("agm", "1.1")),
        ExtraNetworkTag("extrasupernet", ("master", "12", "13", "14")),
        ExtraNetworkTag("hypernet", ("ray",)),
    ]


@pytest.mark.parametrize(
    ("prompt", "kept", "tags"),
    [
        ("a, <lora:face:0.8>, b", "a, , b", [ExtraNetworkTag("lora", ("face", "0.8"))]),
        (
            "<lora:x:te=0.5:unet=1:dyn=8>",
            "",
            [ExtraNetworkTag("lora", ("x",), {"te": "0.5", "unet": "1", "dyn": "8"})],
        ),
        ("<lora:a=b=c>", "", [ExtraNetworkTag("lora", ("a=b=c",))]),
        ("<lora:x:=1:k=>", "", [ExtraNetworkTag("lora", ("x",), {"": "1", "k": ""})]),
        ("<lora:>, <lo-ra:x>, <lora:x", "<lora:>, <lo-ra:x>, <lora:x", []),
    ],
)
def test_extract_extra_networks(prompt, kept, tags):
    assert extract_extra_networks(prompt) == (kept, tags)


def test_extra_network_tag_is_frozen_and_hashable():
    tag = ExtraNetworkTag("lora", ("x",), {"te": "1"})
    with pytest.raises(AttributeError):
        tag.kind = "lyco"
    assert hash(tag) == hash(ExtraNetworkTag("lora", ("x",), {"te": "2"}))


@pytest.mark.parametrize("prompt", SEED_PROMPTS)
def test_extract_extra_networks_of_seed_prompts(prompt):
    assert extract_extra_networks(prompt) == (prompt, [])
