"""One-shot `dgemma run` with stdout (and stdin) piped: plain text, JSON, NDJSON frames, --verbose statistics."""

from __future__ import annotations

import json
import math
import re

import pytest

from tests.support.cli import FAST, PROMPT, assert_one_line_error, dgemma, ok


@pytest.fixture(scope="module")
def as_json(oneshot) -> dict:
    result = oneshot(1, "--json")
    assert result.stderr == ""
    return json.loads(result.stdout)  # json.loads refuses trailing data: exactly one object


@pytest.fixture(scope="module")
def frames(oneshot) -> list[dict]:
    result = oneshot(1, "--frames")
    assert result.stderr == ""
    assert result.stdout.endswith("\n")
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_piped_stdout_is_the_answer_only(oneshot):
    result = oneshot(1)
    assert result.stderr == ""
    assert result.stdout.strip(), "no answer"
    assert "\x1b" not in result.stdout
    assert result.stdout.endswith("\n") and not result.stdout.endswith("\n\n")
    assert " · step " not in result.stdout and "unresolved" not in result.stdout  # no status line, no legend


def test_the_same_seed_gives_the_same_answer_and_another_seed_another(oneshot):
    assert oneshot(1, "--verbose").stdout == oneshot(1).stdout  # two processes (--verbose only adds stderr)
    assert oneshot(2).stdout != oneshot(1).stdout


def test_piped_stdin_is_the_prompt(model, env, oneshot):
    result = ok(dgemma(env, "run", str(model), *FAST, "--seed", "1", input=PROMPT + "\n"))
    assert result.stdout == oneshot(1).stdout


def test_piped_stdin_goes_before_the_prompt(model, env, oneshot):
    result = ok(dgemma(env, "run", str(model), "about", "a", "boat", *FAST, "--seed", "1", input=PROMPT + "\n"))
    assert result.stdout != oneshot(1).stdout  # the words count ...
    joined = ok(dgemma(env, "run", str(model), f"{PROMPT}\n\nabout a boat", *FAST, "--seed", "1"))
    assert result.stdout == joined.stdout  # ... and come after stdin, a blank line between


def test_json_is_one_object_with_consistent_stats(as_json, oneshot, model, canvas):
    assert set(as_json) == {"model", "answer", "thinking", "stats"}
    assert as_json["model"] == model.name
    assert as_json["answer"] == oneshot(1).stdout.strip()
    assert as_json["thinking"] == ""
    stats = as_json["stats"]
    for key in ("prompt_tokens", "generated_tokens", "decoder_forwards", "steps_per_canvas", "tokens_per_forward"):
        assert key in stats, key
    assert stats["prompt_tokens"] > 0
    assert 0 < stats["generated_tokens"] <= math.ceil(32 / canvas) * canvas
    assert len(stats["steps_per_canvas"]) == stats["canvases"] <= math.ceil(32 / canvas)
    assert all(1 <= steps <= 8 for steps in stats["steps_per_canvas"])
    assert sum(stats["steps_per_canvas"]) == stats["decoder_forwards"]
    assert stats["tokens_per_forward"] == pytest.approx(stats["generated_tokens"] / stats["decoder_forwards"])


def test_frames_are_ndjson_step_canvas_final(frames, as_json, canvas):
    types = [frame["type"] for frame in frames]
    assert set(types) <= {"step", "canvas", "final"}
    assert types.count("final") == 1 and types[-1] == "final"
    stats = frames[-1]["stats"]
    assert stats["generated_tokens"] == as_json["stats"]["generated_tokens"]  # same seed, same run
    steps = [frame for frame in frames if frame["type"] == "step"]
    assert len(steps) == stats["decoder_forwards"]
    for frame in steps:
        assert len(frame["ids"]) == len(frame["accepted"]) == len(frame["changed"]) == canvas
    canvases = [frame for frame in frames if frame["type"] == "canvas"]
    assert len(canvases) == stats["canvases"]
    for index, done in enumerate(canvases):
        mine = [frame for frame in steps if frame["canvas"] == index]
        assert [frame["step"] for frame in mine] == list(range(1, len(mine) + 1))  # restarts at 1
        assert len(mine) == stats["steps_per_canvas"][index] == done["steps"]
        assert done["ids"] == mine[-1]["ids"]  # a canvas is its last step
    assert "".join(done["text"] for done in canvases).strip() == as_json["answer"]


def test_verbose_puts_the_statistics_on_stderr(oneshot, as_json):
    result = oneshot(1, "--verbose")
    assert result.stdout == oneshot(1).stdout
    for label in ("load duration:", "prompt eval count:", "eval rate:", "decoder forwards:", "tokens per forward:"):
        assert label in result.stderr, label
    assert "\x1b" not in result.stderr
    stats = as_json["stats"]  # the same seed: the same counts
    assert f"decoder forwards:     {stats['decoder_forwards']}\n" in result.stderr
    assert f"tokens per forward:   {stats['tokens_per_forward']:.2f}\n" in result.stderr
    assert "quantization:         none (float32)\n" in result.stderr
    assert re.search(r"^kernels: +PyTorch \(CPU\)$", result.stderr, flags=re.MULTILINE), result.stderr
    assert re.search(r"^weights: +[\d.]+ [KMG]B float32$", result.stderr, flags=re.MULTILINE), result.stderr


def test_ollamas_format_json_is_refused_in_one_line(model, env):
    message = assert_one_line_error(dgemma(env, "run", str(model), PROMPT, "--format", "json"), exit_code=2)
    assert "not supported for diffusion models yet" in message and "--json" in message
