"""Fill in the blanks (issue 20, part 2): the template's syntax, and seeded runs of dgemma-tiny in which the fixed
tokens hold through every step and come back verbatim, over more than one canvas. (dgemma-tiny was trained on
stories, not on infilling: what its holes say is not checked, only that the sampler writes nothing else.)"""

from __future__ import annotations

import io
import json
import re

import dgemma_runtime
import pytest
import torch
from dgemma_runtime import CanvasEvent, FinalEvent, Message, OptionError, StepEvent
from dgemma_runtime.infill import DEFAULT_HOLE, INSTRUCTION, parse
from rich.console import Console

from dgemma_cli.views import LiveView
from tests.support.cli import BUILTIN_CONFIG, DGEMMA, assert_one_line_error, dgemma, dgemma_env, needs_builtin, ok

STORY = (
    "Once upon a time, a little {} named {3} lived in a small house by the sea. Every morning she walked to the "
    "{4} and looked for shells. One day she found a {} that glowed like the moon. She carried it home and showed "
    "it to her {2}, who smiled. From that day on, {} and the glowing {{shell}} were best friends."
)
FAST = {"max_denoising_steps": 8, "seed": 1}


def test_holes_have_a_default_or_given_length_and_double_braces_are_literal():
    assert parse("The {} is the largest planet, and it has {4} moons.").parts == (
        "The",  # the space before a hole is the hole's: the model writes " Jupiter"
        DEFAULT_HOLE,
        " is the largest planet, and it has",
        4,
        " moons.",
    )
    assert parse("{{x}}:{2}{1}").parts == ("{x}:", 2, 1)


@pytest.mark.parametrize(
    ("template", "complaint"),
    [
        ("no holes here", "no holes"),
        ("a {{}} b", "no holes"),
        ("a } b {}", "stray '}' at character 3"),
        ("a {x} b", "stray '{'"),
        ("a {0} b", "1 to 999999 tokens, not 0"),
        ("a {1234567} b", "not 1234567"),
    ],
)
def test_malformed_templates_are_refused_when_options_resolve(template, complaint):
    with pytest.raises(OptionError, match=re.escape(complaint)):
        dgemma_runtime.GenerationOptions(infill=template).resolve(dgemma_runtime.GenerationDefaults())


@pytest.fixture(scope="module")
def tiny():
    if not BUILTIN_CONFIG.exists():
        pytest.skip("dgemma-tiny has no weights here")
    return dgemma_runtime.load(BUILTIN_CONFIG.parent, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def inputs(tiny) -> list[torch.Tensor]:
    """Every canvas the decoder is given during `story`: what the sampler hands the model, renoising included."""
    return []


@pytest.fixture(scope="module")
def story(tiny, inputs):
    ids = tiny.tokenizer.chat([Message("user", INSTRUCTION)])
    decode = tiny.decode

    def watched(canvas: torch.Tensor, *args: object) -> torch.Tensor:
        inputs.append(canvas.clone())
        return decode(canvas, *args)

    tiny.decode = watched
    try:
        return list(tiny.stream(ids, infill=STORY, **FAST))
    finally:
        tiny.decode = decode


def pinned_tokens(engine, template: str) -> list[int | None]:
    """The answer's tokens as the template fixes them, None in the holes; then the end of the turn."""
    return [*parse(template).ids(engine.tokenizer), engine.tokenizer.turn_close]


def test_fixed_tokens_never_change_in_any_step_of_any_canvas(tiny, story, inputs):
    L = tiny.config.canvas_length
    pinned = pinned_tokens(tiny, STORY)
    assert len(pinned) > L  # the template spans canvases
    steps = [e for e in story if isinstance(e, StepEvent)]
    assert {e.canvas for e in steps} == {0, 1}
    for event in steps:
        expected = pinned[event.canvas * L : (event.canvas + 1) * L]
        expected += [tiny.defaults.pad_token_id] * (L - len(expected))  # after the end of the turn: padding
        assert event.fixed == tuple(t is not None for t in expected)
        assert all(t is None or t == got for t, got in zip(expected, event.ids, strict=True)), event.step
        # a fixed token takes no sample; the lowest-entropy hole is accepted every step
        assert not any(a and f for a, f in zip(event.accepted, event.fixed, strict=True))
        assert any(event.accepted)
    for canvas, given in zip([e.canvas for e in steps], inputs, strict=True):  # one step event per forward
        window = pinned[canvas * L : (canvas + 1) * L]
        assert all(t is None or t == got for t, got in zip(window, given[0].tolist(), strict=False))
    holes = [i for i, t in enumerate(pinned) if t is None]
    first = next(e for e in steps if e.canvas == 0)
    last = [e for e in steps if e.canvas == 0][-1]
    assert any(first.ids[i] != last.ids[i] for i in holes if i < L)  # the holes did denoise


def test_the_answer_is_the_template_filled_in_verbatim(tiny, story):
    text = "".join(e.text for e in story if isinstance(e, CanvasEvent))
    fixed = [part for part in parse(STORY).parts if isinstance(part, str)]
    assert re.fullmatch(".*?".join(map(re.escape, fixed)), text, re.DOTALL), text
    final = story[-1]
    assert isinstance(final, FinalEvent)
    pinned = pinned_tokens(tiny, STORY)
    assert final.stats.generated_tokens == len(pinned) and final.stats.finish_reason == "stop"
    assert all(t is None or t == got for t, got in zip(pinned, final.token_ids[0], strict=True))


def test_the_live_view_draws_the_fixed_text_plainly_and_the_holes_denoising(tiny, story):
    frames = []
    console = Console(file=io.StringIO(), force_terminal=True, width=100, height=40)
    view = LiveView(console, tiny.tokenizer, on_frame=frames.append, offscreen=True)
    for event in story:
        view.handle(event)
    view.finish()
    drawn = [f.canvas for f in frames if f.canvas]
    steps = [e for e in story if isinstance(e, StepEvent)]
    assert len(drawn) == len(steps)
    for canvas, event in zip(drawn, steps, strict=True):
        assert all(t.state == "settled" for t, fixed in zip(canvas, event.fixed, strict=True) if fixed)
    first = drawn[0]
    assert all(t.state != "settled" for t, fixed in zip(first, steps[0].fixed, strict=True) if not fixed)


def test_a_length_limit_cuts_the_template_like_any_answer(tiny):
    ids = tiny.tokenizer.chat([Message("user", INSTRUCTION)])
    result = tiny.generate(ids, infill=STORY, max_new_tokens=20, **FAST)
    assert result.stats.canvases == 1 and result.stats.finish_reason == "length"
    pinned = pinned_tokens(tiny, STORY)[:20]
    assert len(result.token_ids) == 20
    assert all(t is None or t == got for t, got in zip(pinned, result.token_ids, strict=True))


def test_the_default_sampler_is_untouched_by_the_mode(tiny):
    """No template, no pinning: the same seed gives the same answer as before infill existed (the parity tests
    hold it to the reference); here, that an infill run in between leaves no state behind."""
    ids = tiny.tokenizer.chat([Message("user", "Tell me a story")])
    before = tiny.generate(ids, max_new_tokens=64, **FAST).token_ids
    tiny.generate(ids, infill="A {} story.", max_new_tokens=64, **FAST)
    assert tiny.generate(ids, max_new_tokens=64, **FAST).token_ids == before


@needs_builtin
@pytest.mark.skipif(DGEMMA is None, reason="no 'dgemma' executable")
def test_run_infill_prints_the_filled_template(tmp_path):
    env = dgemma_env(tmp_path)
    template = "The {} is the largest planet, and it has {4} moons."
    args = ("run", "dgemma-tiny", "--infill", template, "--steps", "8", "--seed", "2")
    plain = ok(dgemma(env, *args, "--no-view")).stdout.strip()
    envelope = json.loads(ok(dgemma(env, *args, "--json")).stdout)
    assert plain == envelope["answer"]
    assert re.fullmatch(r"The.*? is the largest planet, and it has.*? moons\.", plain, re.DOTALL), plain
    assert envelope["stats"]["finish_reason"] == "stop"
    refused = assert_one_line_error(dgemma(env, *args, "--think"))
    assert "--infill" in refused and "--think" in refused
