"""A1111 prompt encoding on tiny models, checked against direct calls of the text encoders and the UNet.

The tiny tokenizer makes every character one token (and a space none), so `"a b c"` is three tokens and
chunk boundaries can be placed exactly. The references run the CLIP encoders on hand-built 77-token
inputs and apply A1111's formulas (`sd_emphasis`, `CFGDenoiser.combine_denoised`) by hand.
"""

import string

import pytest
import torch

from engine.demo.tiny import tiny_components
from engine.pipeline import A1111Pipeline
from engine.prompts import parse_prompt_attention
from engine.prompts.conditioning import build_conditioning
from engine.prompts.encode import PromptEncoder
from engine.prompts.options import PassShape, PromptOptions, prompt_options_from
from engine.sampling.guidance import GuidedUNet, StepConditioning


GUIDANCE = 7.0


def make_pipe(family: str) -> A1111Pipeline:
    components = tiny_components(family, seed=0)
    return A1111Pipeline(
        **{key: components.get(key) for key in A1111Pipeline._get_signature_keys(A1111Pipeline)[0]}
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine two threads cost 100x per op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd15():
    return make_pipe("sd15")


@pytest.fixture(scope="module")
def sdxl():
    return make_pipe("sdxl")


def words(count: int, offset: int = 0) -> list[str]:
    """Single-letter words: one token each with the tiny tokenizer."""
    return [string.ascii_lowercase[(offset + i) % 26] for i in range(count)]


def encoder(pipe, **options) -> PromptEncoder:
    return PromptEncoder(pipe.prompt_encoder(parse_prompt_attention).slots, parse_prompt_attention, **options)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chunk_ids(tokenizer, token_ids: list[int], pad: int | None = None) -> torch.Tensor:
    """[BOS] + ids + EOS padding to 77, as one batch row; `pad` replaces what follows the first EOS."""
    row = [tokenizer.bos_token_id, *token_ids] + [tokenizer.eos_token_id] * (76 - len(token_ids))
    if pad is not None:
        first_eos = len(token_ids) + 1
        row = row[: first_eos + 1] + [pad] * (76 - first_eos)
    return torch.tensor([row])


@torch.no_grad()
def sd15_hidden(pipe, token_ids: list[int], clip_skip: int = 1) -> torch.Tensor:
    output = pipe.text_encoder(input_ids=chunk_ids(pipe.tokenizer, token_ids), output_hidden_states=True)
    if clip_skip == 1:
        return output.last_hidden_state
    return pipe.text_encoder.final_layer_norm(output.hidden_states[-clip_skip])


def original_emphasis(hidden: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """A1111 `EmphasisOriginal.after_transformers`, written from its description."""
    weighted = hidden * multipliers[..., None]
    return weighted * (hidden.mean() / weighted.mean())


# --- chunking ------------------------------------------------------------------------------------------


@torch.no_grad()
def test_long_prompt_is_two_chunks_each_encoded_alone(sd15):
    text = " ".join(words(80))
    got = encoder(sd15).encode([text]).embeds
    token_ids = ids(sd15.tokenizer, text)
    assert got.shape == (1, 154, 32)
    torch.testing.assert_close(got[:, :77], sd15_hidden(sd15, token_ids[:75]))
    torch.testing.assert_close(got[:, 77:], sd15_hidden(sd15, token_ids[75:]))


@torch.no_grad()
def test_comma_backtrack_moves_the_last_phrase_to_the_next_chunk(sd15):
    text = " ".join(words(70)) + ", " + " ".join(words(10, offset=3))
    token_ids = ids(sd15.tokenizer, text)
    assert token_ids[70] == sd15.tokenizer.get_vocab()[",</w>"]
    got = encoder(sd15).encode([text]).embeds
    torch.testing.assert_close(got[:, :77], sd15_hidden(sd15, token_ids[:71]))
    torch.testing.assert_close(got[:, 77:], sd15_hidden(sd15, token_ids[71:]))
    # With backtracking off, the first chunk is filled to 75 tokens instead.
    plain = encoder(sd15, comma_backtrack=0).encode([text]).embeds
    torch.testing.assert_close(plain[:, :77], sd15_hidden(sd15, token_ids[:75]))


@torch.no_grad()
def test_break_starts_a_new_chunk(sd15):
    got = encoder(sd15).encode(["a b BREAK c d"]).embeds
    assert got.shape[1] == 154
    torch.testing.assert_close(got[:, :77], sd15_hidden(sd15, ids(sd15.tokenizer, "a b")))
    torch.testing.assert_close(got[:, 77:], sd15_hidden(sd15, ids(sd15.tokenizer, "c d")))


# --- emphasis and CLIP skip ------------------------------------------------------------------------------


def emphasis_reference(pipe, mode: str) -> torch.Tensor:
    hidden = sd15_hidden(pipe, ids(pipe.tokenizer, "a b c d"))
    multipliers = torch.ones(1, 77)
    multipliers[0, 2] = 1.5  # b
    multipliers[0, 4] = 1 / 1.1  # d
    return {
        "Original": lambda: original_emphasis(hidden, multipliers),
        "No norm": lambda: hidden * multipliers[..., None],
        "Ignore": lambda: hidden,
        # No parsing at all: the brackets, colon and digits are tokens of their own.
        "None": lambda: sd15_hidden(pipe, ids(pipe.tokenizer, "a (b:1.5) c [d]")),
    }[mode]()


@pytest.mark.parametrize("mode", ["Original", "No norm", "Ignore", "None"])
@torch.no_grad()
def test_emphasis_modes_match_a_direct_computation(sd15, mode):
    got = encoder(sd15, emphasis=mode).encode(["a (b:1.5) c [d]"]).embeds
    torch.testing.assert_close(got, emphasis_reference(sd15, mode))


@torch.no_grad()
def test_original_emphasis_keeps_the_mean_and_differs_from_no_norm(sd15):
    text = "a (b:1.5) c [d]"
    original = encoder(sd15).encode([text]).embeds
    plain = sd15_hidden(sd15, ids(sd15.tokenizer, "a b c d"))
    torch.testing.assert_close(original.mean(), plain.mean())
    assert not torch.allclose(original, encoder(sd15, emphasis="No norm").encode([text]).embeds)


@torch.no_grad()
def test_sd15_clip_skip_takes_the_normed_earlier_layer(sd15):
    got = encoder(sd15).encode(["a b c"], clip_skip=2).embeds
    torch.testing.assert_close(got, sd15_hidden(sd15, ids(sd15.tokenizer, "a b c"), clip_skip=2))
    assert not torch.allclose(got, encoder(sd15).encode(["a b c"]).embeds)


@torch.no_grad()
def test_sdxl_encoders_chunk_independently_and_pool_the_first_chunk_before_emphasis(sdxl):
    text = "(a:1.3) " + " ".join(words(79, offset=1))
    got = encoder(sdxl).encode([text])
    token_ids = ids(sdxl.tokenizer, text.replace("(a:1.3)", "a"))
    multipliers = torch.ones(1, 77)
    multipliers[0, 1] = 1.3
    first_l = sdxl.text_encoder(
        input_ids=chunk_ids(sdxl.tokenizer, token_ids[:75]), output_hidden_states=True
    )
    first_g = sdxl.text_encoder_2(
        input_ids=chunk_ids(sdxl.tokenizer_2, token_ids[:75], pad=0), output_hidden_states=True
    )
    second_l = sdxl.text_encoder(
        input_ids=chunk_ids(sdxl.tokenizer, token_ids[75:]), output_hidden_states=True
    )
    second_g = sdxl.text_encoder_2(
        input_ids=chunk_ids(sdxl.tokenizer_2, token_ids[75:], pad=0), output_hidden_states=True
    )
    expected = torch.cat(
        [
            torch.cat(
                [original_emphasis(first_l.hidden_states[-2], multipliers), second_l.hidden_states[-2]], dim=1
            ),
            torch.cat(
                [original_emphasis(first_g.hidden_states[-2], multipliers), second_g.hidden_states[-2]], dim=1
            ),
        ],
        dim=-1,
    )
    assert got.embeds.shape == (1, 154, 80)
    torch.testing.assert_close(got.embeds, expected)
    torch.testing.assert_close(got.pooled, first_g.text_embeds)


@torch.no_grad()
def test_sdxl_ignores_clip_skip_unless_clip_l_skip_is_set(sdxl):
    one = encoder(sdxl).encode(["a b c"], clip_skip=1).embeds
    torch.testing.assert_close(encoder(sdxl).encode(["a b c"], clip_skip=2).embeds, one)
    skipped = encoder(sdxl, sdxl_clip_l_skip=True).encode(["a b c"], clip_skip=3).embeds
    direct = sdxl.text_encoder(
        input_ids=chunk_ids(sdxl.tokenizer, ids(sdxl.tokenizer, "a b c")), output_hidden_states=True
    ).hidden_states[-3]
    torch.testing.assert_close(skipped[..., :32], direct)
    torch.testing.assert_close(skipped[..., 32:], one[..., 32:])


# --- schedules --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        PassShape(64, 64, steps=6),
        PassShape(64, 64, steps=3, second_order=True),  # A1111 counts 2 model calls per step
        PassShape(64, 64, steps=4).hires_pass(64, 64, steps=6, second_order=False),  # `[a:b:7]`-like offset
    ],
    ids=["plain", "second-order", "hires"],
)
@torch.no_grad()
def test_schedule_variants_are_encoded_together_and_switch_after_their_step(sd15, shape):
    when = 3 + (shape.firstpass_steps or 0)
    prompt = f"(x:1.5) [a:b:{when}]"
    conditioning = build_conditioning(sd15, [prompt], [""], shape, PromptOptions(), parse_prompt_attention)
    hidden = torch.cat([sd15_hidden(sd15, ids(sd15.tokenizer, f"x {w}")) for w in "ab"])
    multipliers = torch.ones(2, 77)
    multipliers[:, 1] = 1.5
    together = original_emphasis(hidden, multipliers)  # one mean over both variants, as A1111
    # A1111 uses a variant while the 0-based call index is <= its end step.
    for call, variant in [(0, 0), (3, 0), (4, 1), (5, 1)]:
        torch.testing.assert_close(conditioning(call).cond[0], together[variant])
    alone = original_emphasis(hidden[:1], multipliers[:1])
    assert not torch.allclose(alone[0], together[0])


# --- guidance ---------------------------------------------------------------------------------------------


@torch.no_grad()
def unet_eps(pipe, x, t, context) -> torch.Tensor:
    return pipe.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]


@torch.no_grad()
def test_and_subprompts_are_weighted_cond_rows(sd15):
    prompts = ["a b AND c d:0.5", "e f"]
    conditioning = build_conditioning(
        sd15, prompts, ["n", "m"], PassShape(64, 64, 4), PromptOptions(), parse_prompt_attention
    )
    step = conditioning(0)
    assert step.composition == (((0, 1.0), (1, 0.5)), ((2, 1.0),))
    for row, text in enumerate(["a b", "c d", "e f"]):
        torch.testing.assert_close(step.cond[row], sd15_hidden(sd15, ids(sd15.tokenizer, text))[0])

    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor(500.0)
    guided = GuidedUNet(sd15.unet, GUIDANCE, conditioning)
    got = guided(x, t, 0)
    cond = [
        unet_eps(sd15, x[image : image + 1], t, step.cond[row : row + 1])
        for image, row in [(0, 0), (0, 1), (1, 2)]
    ]
    uncond = [unet_eps(sd15, x[image : image + 1], t, step.uncond[image : image + 1]) for image in range(2)]
    expected = torch.cat(
        [
            uncond[0] + GUIDANCE * (cond[0] - uncond[0]) + 0.5 * GUIDANCE * (cond[1] - uncond[0]),
            uncond[1] + GUIDANCE * (cond[2] - uncond[1]),
        ]
    )
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert guided.calls == 1  # equal token counts: one batch of 3 cond rows + 2 uncond rows


@torch.no_grad()
def test_unequal_lengths_run_separate_passes(sd15):
    negative = " ".join(words(80))
    conditioning = build_conditioning(
        sd15, ["a b"], [negative], PassShape(64, 64, 4), PromptOptions(), parse_prompt_attention
    )
    step = conditioning(0)
    assert (step.cond.shape[1], step.uncond.shape[1]) == (77, 154)
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor(300.0)
    guided = GuidedUNet(sd15.unet, GUIDANCE, conditioning)
    got = guided(x, t, 0)
    cond, uncond = unet_eps(sd15, x, t, step.cond), unet_eps(sd15, x, t, step.uncond)
    torch.testing.assert_close(got, uncond + GUIDANCE * (cond - uncond), atol=1e-5, rtol=1e-5)
    assert guided.calls == 2


@torch.no_grad()
def test_batch_prompts_of_different_lengths_repeat_their_last_vector(sd15):
    step = build_conditioning(
        sd15,
        ["a", " ".join(words(80))],
        ["", ""],
        PassShape(64, 64, 4),
        PromptOptions(),
        parse_prompt_attention,
    )(0)
    assert step.cond.shape == (2, 154, 32)
    torch.testing.assert_close(step.cond[0, 77:], step.cond[0, 76:77].expand(77, -1))


def test_plain_guidance_is_unchanged_without_composition():
    class Linear(torch.nn.Module):
        dtype = torch.float32

        def forward(self, x, t, encoder_hidden_states, added_cond_kwargs=None, return_dict=False):
            return (x * encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None],)

    cond, uncond = torch.full((1, 77, 4), 2.0), torch.full((1, 77, 4), 0.5)
    x = torch.ones(1, 4, 2, 2)
    got = GuidedUNet(Linear(), 3.0, lambda call: StepConditioning(cond, uncond))(x, torch.tensor(1.0), 0)
    torch.testing.assert_close(got, torch.full_like(x, 0.5 + 3.0 * 1.5))


@torch.no_grad()
def test_sdxl_empty_negative_is_zeros_and_time_ids_are_the_pass_size(sdxl):
    step = build_conditioning(
        sdxl, ["a b"], [""], PassShape(64, 96, 4), PromptOptions(), parse_prompt_attention
    )(0)
    assert torch.count_nonzero(step.uncond) == 0
    assert torch.count_nonzero(step.uncond_added["text_embeds"]) == 0
    assert torch.count_nonzero(step.cond_added["text_embeds"]) > 0
    assert step.cond_added["time_ids"].tolist() == [[64.0, 96.0, 0.0, 0.0, 64.0, 96.0]]


# --- options ----------------------------------------------------------------------------------------------


def test_override_settings_map_to_prompt_options():
    options = prompt_options_from(
        {
            "CLIP_stop_at_last_layers": 2.0,
            "emphasis": "No norm",
            "comma_padding_backtrack": 0,
            "sdxl_clip_l_skip": True,
            "eta_ddim": 1,
        }
    )
    assert options == PromptOptions(
        clip_skip=2, emphasis="No norm", comma_padding_backtrack=0, sdxl_clip_l_skip=True
    )


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"emphasis": "Strong"}, "emphasis"),
        ({"CLIP_stop_at_last_layers": 13}, "CLIP_stop_at_last_layers"),
        ({"comma_padding_backtrack": 1.5}, "comma_padding_backtrack"),
        ({"sdxl_clip_l_skip": "yes"}, "sdxl_clip_l_skip"),
    ],
)
def test_bad_override_settings_name_the_field(settings, field):
    from engine.errors import RequestError

    with pytest.raises(RequestError, match=f"override_settings.{field}"):
        prompt_options_from(settings)


@torch.no_grad()
def test_emphasis_infotext_only_for_non_default_modes_with_brackets(sd15):
    def params(prompt, mode):
        return build_conditioning(
            sd15, [prompt], [""], PassShape(64, 64, 2), PromptOptions(emphasis=mode), parse_prompt_attention
        ).extra_generation_params

    assert params("a (b)", "No norm") == {"Emphasis": "No norm"}
    assert params("a b", "No norm") == {}
    assert params("a (b)", "Original") == {}
