"""Issue 20, parts 3 and 4. The answer length is exact in every output of `dgemma run` (plain, --json,
--frames, --verbose). Thinking reaches the plain stream and the live view canvas by canvas, as it forms.

dgemma-tiny was trained without thinking, and a random model opens no thought channel on cue, so the thinking
tests drive a real engine whose decoder is replaced by one certain of a script (`scripted`): the canvas loop,
sampler, text stream and views are the real ones."""

from __future__ import annotations

import io
import json
import re

import dgemma_runtime
import pytest
from dgemma_runtime import CanvasEvent, Engine, Message, StepEvent
from rich.console import Console

from dgemma_cli.views import THINKING_LABEL, LiveView, PlainView
from tests.support.checkpoints import write_chat_checkpoint
from tests.support.cli import PROMPT, dgemma, ok
from tests.support.scripted import ANSWER, THOUGHT, scripted, thinking_script

LENGTH = 21  # one canvas and five tokens of the next (the test model's canvas is 16)


# -- exact length through the CLI -----------------------------------------------------------------


@pytest.fixture(scope="module")
def cut(oneshot):
    """`--max-new-tokens 21` in every output format, one seed (its answer has no end of turn in 21 tokens)."""
    flags = ("--max-new-tokens", str(LENGTH))
    return {
        "json": json.loads(oneshot(3, *flags, "--json").stdout),
        "plain": oneshot(3, *flags, "--no-view", "--verbose"),
        "frames": [json.loads(line) for line in oneshot(3, *flags, "--frames").stdout.splitlines()],
        "whole": json.loads(oneshot(3, "--json").stdout),  # FAST: 32 tokens
    }


def test_the_json_envelope_counts_exactly_the_tokens_asked_for(cut):
    stats = cut["json"]["stats"]
    assert stats["generated_tokens"] == LENGTH and stats["finish_reason"] == "length"
    assert stats["canvases"] == 2  # both canvases were denoised whole: the cut is in what is returned
    assert stats["tokens_per_forward"] == pytest.approx(LENGTH / stats["decoder_forwards"])


def test_the_cut_answer_is_the_start_of_the_whole_one(cut):
    assert cut["whole"]["stats"]["generated_tokens"] == 32  # the same seed, two whole canvases
    assert cut["whole"]["answer"].startswith(cut["json"]["answer"]) and cut["json"]["answer"]
    assert cut["whole"]["answer"] != cut["json"]["answer"]


def test_plain_text_and_verbose_agree_with_the_envelope(cut):
    assert cut["plain"].stdout.strip() == cut["json"]["answer"]
    assert re.search(rf"^eval count:\s+{LENGTH} token\(s\)$", cut["plain"].stderr, re.MULTILINE)


def test_frames_stream_exactly_the_returned_tokens(cut):
    canvases = [r for r in cut["frames"] if r["type"] == "canvas"]
    steps = [r for r in cut["frames"] if r["type"] == "step"]
    assert [len(c["ids"]) for c in canvases] == [16, LENGTH - 16]
    assert all(len(s["ids"]) == 16 for s in steps)  # the last canvas still denoises all its positions
    assert cut["frames"][-1]["stats"]["generated_tokens"] == LENGTH


def test_an_answer_length_within_a_canvas_is_exact_too(model, shared_env):
    result = ok(dgemma(shared_env, "run", str(model), PROMPT, "--max-new-tokens", "3", "--seed", "3", "--json"))
    assert json.loads(result.stdout)["stats"]["generated_tokens"] == 3


# -- thinking, canvas by canvas -------------------------------------------------------------------


@pytest.fixture(scope="module")
def thinker(tmp_path_factory) -> Engine:
    folder = write_chat_checkpoint(tmp_path_factory.mktemp("thinker"))
    engine = dgemma_runtime.load(folder, device="cpu", dtype="float32")
    assert engine.tokenizer is not None
    return scripted(engine, thinking_script(engine.tokenizer))


@pytest.fixture(scope="module")
def events(thinker) -> list:
    assert thinker.tokenizer is not None
    ids = thinker.tokenizer.chat([Message("user", "Why is the sky blue?")], think=True)
    return list(thinker.stream(ids, seed=0))


def test_the_runtime_decodes_thinking_canvas_by_canvas(events):
    canvases = [e for e in events if isinstance(e, CanvasEvent)]
    assert len(canvases) >= 3
    assert canvases[0].thinking and not canvases[0].text  # the first canvas is thought only, and says so at once
    assert "".join(c.thinking for c in canvases) == THOUGHT
    assert "".join(c.text for c in canvases) == ANSWER
    last_answer = max(i for i, c in enumerate(canvases) if c.text)
    assert max(i for i, c in enumerate(canvases) if c.thinking) < last_answer


def test_the_plain_view_writes_each_canvas_of_thinking_as_it_arrives(events):
    out, err = io.StringIO(), io.StringIO()
    view = PlainView(out, err)
    seen = []
    for event in events:
        view.handle(event)
        if isinstance(event, CanvasEvent):
            seen.append((err.getvalue(), out.getvalue()))
    view.finish()
    assert seen[0][0] and THOUGHT.startswith(seen[0][0]) and not seen[0][1]  # thought out before any answer
    assert err.getvalue() == THOUGHT + "\n"  # a line of its own before the answer starts on stdout
    assert out.getvalue() == ANSWER.lstrip() + "\n"


def test_the_live_view_labels_and_dims_the_thought_channel_while_it_denoises(thinker, events):
    console = Console(file=io.StringIO(), force_terminal=True, width=100, height=40)
    frames = []
    view = LiveView(console, thinker.tokenizer, thinking=True, on_frame=frames.append, offscreen=True)
    dimmed, statuses = [], []
    for event in events:
        view.handle(event)
        if isinstance(event, StepEvent):
            dimmed.append((event.canvas, any("dim" in str(span.style) for span in view.canvas.spans)))
            statuses.append((event.canvas, view.status.plain))
    view.finish()
    assert all(dim for canvas, dim in dimmed if canvas == 0)  # the first canvas is all thought
    assert not any(dim for canvas, dim in dimmed if canvas == max(c for c, _ in dimmed))  # the last, all answer
    assert all(status.startswith("thinking · ") for canvas, status in statuses if canvas == 0)
    said = frames[-1].said
    assert said[0] == (THINKING_LABEL, "thinking")  # the label, then the thought, before any answer
    assert "".join(text for text, kind in said if kind == "thinking") == THINKING_LABEL + THOUGHT
    assert "".join(text for text, kind in said if kind == "answer").strip() == ANSWER.strip()


def test_the_live_view_draws_no_thought_channel_when_none_was_asked_for(thinker, events):
    console = Console(file=io.StringIO(), force_terminal=True, width=100, height=40)
    view = LiveView(console, thinker.tokenizer, offscreen=True)
    for event in events:
        view.handle(event)
        if isinstance(event, StepEvent):
            assert not any("dim" in str(span.style) for span in view.canvas.spans)
            assert view.status.plain.startswith("canvas ")
    view.finish()
