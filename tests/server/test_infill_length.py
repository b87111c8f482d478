"""Issue 20 over HTTP: `infill` templates (Ollama's /api/generate, OpenAI's /v1/completions and chat), answer
lengths that are exact (eval_count / completion_tokens as asked, done_reason / finish_reason "length"), and
thinking streamed canvas by canvas, ahead of the answer's last canvas.

The thinking tests serve an engine whose decoder is certain of a script (see tests/cli/test_length_and_thinking):
the random test model does not think on cue, and dgemma-tiny was trained without thinking."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import dgemma_runtime
import pytest
from dgemma_runtime import Tokenizer
from dgemma_runtime.infill import parse
from starlette.testclient import TestClient

from dgemma_cli.models import store
from dgemma_cli.serve.app import create_app
from dgemma_cli.serve.shared import ServeState
from dgemma_cli.serve.worker import Worker
from tests.support.checkpoints import write_chat_checkpoint
from tests.support.cli import PROMPT
from tests.support.scripted import ANSWER, THOUGHT, scripted, thinking_script

TEMPLATE = "Once upon a time, a little {} named {3} lived in a small house by the sea, and every day she {4}."
FIXED = [part for part in parse(TEMPLATE).parts if isinstance(part, str)]
SEEDED = {"seed": 3}  # its answer to PROMPT has no end of turn within 32 tokens
LENGTH = 21  # a canvas of the test model (16) and five tokens more


def filled(text: str) -> bool:
    """The template's fixed text, verbatim and in order, with the holes' text between."""
    return re.fullmatch(".*?".join(map(re.escape, FIXED)), text.strip(), re.DOTALL) is not None


@pytest.fixture(scope="module")
def pinned(checkpoint: Path) -> list[int | None]:
    tokenizer = Tokenizer(checkpoint / "tokenizer.json")
    return [*parse(TEMPLATE).ids(tokenizer), tokenizer.turn_close]


# -- infill --------------------------------------------------------------------------------------------------


def test_ollama_generate_fills_the_holes_and_streams_them_denoising(server, pinned):
    body = {"model": "tiny", "infill": TEMPLATE, "options": SEEDED, "frames": True}
    with server.http.stream("POST", "/api/generate", json=body) as response:
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.iter_lines()]
    steps = [line for line in lines if line.get("type") == "step"]
    canvases = -(-len(pinned) // 16)
    assert canvases > 1 and {s["canvas"] for s in steps} == set(range(canvases))  # the template spans canvases
    for step in steps:
        start = step["canvas"] * 16
        for i, (token, fixed) in enumerate(zip(step["ids"], step["fixed"], strict=True)):
            expected = pinned[start + i] if start + i < len(pinned) else 0  # padding after the end of the turn
            assert fixed == (expected is not None) and (expected is None or token == expected)
    text = "".join(line.get("response", "") for line in lines if "type" not in line)
    assert filled(text), text
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] == len(pinned)


def test_openai_completions_take_an_infill_with_or_without_an_instruction(server, pinned):
    for prompt in ("", "Write a story."):
        body = {"model": "tiny", "prompt": prompt, "infill": TEMPLATE, "seed": 3}
        reply = server.http.post("/v1/completions", json=body).json()
        assert filled(reply["choices"][0]["text"]), reply
        assert reply["choices"][0]["finish_reason"] == "stop"
        assert reply["usage"]["completion_tokens"] == len(pinned)


def test_openai_chat_fills_the_answer_of_the_conversation(server):
    messages = [{"role": "user", "content": "Fill in the story."}]
    body = {"model": "tiny", "messages": messages, "infill": TEMPLATE, "seed": 3}
    reply = server.http.post("/v1/chat/completions", json=body).json()
    assert filled(reply["choices"][0]["message"]["content"]), reply


@pytest.mark.parametrize(
    ("path", "body", "complaint"),
    [
        ("/api/generate", {"infill": TEMPLATE, "think": True}, "cannot be combined with think"),
        ("/v1/completions", {"prompt": "x", "infill": TEMPLATE, "reasoning_effort": "high"}, "think"),
        ("/api/generate", {"infill": "no holes"}, "no holes"),
        ("/v1/completions", {"prompt": "x", "infill": "a } {}"}, "stray '}'"),
    ],
)
def test_an_infill_that_cannot_be_served_is_a_400(server, path, body, complaint):
    response = server.http.post(path, json={"model": "tiny", "stream": False} | body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert complaint in (error["message"] if isinstance(error, dict) else error)


# -- exact length ----------------------------------------------------------------------------------------------


def test_ollama_num_predict_is_exact_streamed_or_not(server):
    body = {"model": "tiny", "prompt": PROMPT, "options": SEEDED | {"num_predict": LENGTH}}
    whole = server.http.post("/api/generate", json=body | {"stream": False}).json()
    assert whole["eval_count"] == LENGTH and whole["done_reason"] == "length"
    with server.http.stream("POST", "/api/generate", json=body) as response:
        chunks = [json.loads(line) for line in response.iter_lines()]
    assert "".join(c["response"] for c in chunks) == whole["response"]
    assert chunks[-1]["eval_count"] == LENGTH and chunks[-1]["done_reason"] == "length"
    longer = server.http.post("/api/generate", json=body | {"stream": False, "options": SEEDED}).json()
    assert longer["response"].startswith(whole["response"]) and longer["eval_count"] > LENGTH


def test_openai_max_tokens_is_exact_in_both_routes(server):
    completion = server.http.post(
        "/v1/completions", json={"model": "tiny", "prompt": PROMPT, "max_tokens": LENGTH} | SEEDED
    ).json()
    assert completion["usage"]["completion_tokens"] == LENGTH
    assert completion["choices"][0]["finish_reason"] == "length"
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_completion_tokens": LENGTH,
        "stream": True,
        "stream_options": {"include_usage": True},
    } | SEEDED
    with server.http.stream("POST", "/v1/chat/completions", json=body) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert events[-1]["usage"]["completion_tokens"] == LENGTH
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    said = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert said == completion["choices"][0]["text"]  # the same seed and prompt, the same cut


# -- thinking as it forms ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thinking_server(tmp_path_factory) -> Iterator[TestClient]:
    """An in-process server whose model thinks on cue (a scripted decoder), stored as 'thinker'."""
    folder = write_chat_checkpoint(tmp_path_factory.mktemp("thinker"))

    def loader(manifest: store.Manifest, *_progress: object) -> dgemma_runtime.Engine:
        engine = dgemma_runtime.load(manifest.folder, device="cpu", dtype="float32")
        return scripted(engine, thinking_script(engine.tokenizer))

    thinker = store.Manifest(name="thinker", tag="latest", path=str(folder), source="local")
    worker = Worker(loader)
    worker.start()
    with TestClient(create_app(ServeState(worker, thinker, 60.0)), base_url="http://localhost") as client:
        yield client
    worker.stop()


def test_ollama_streams_thinking_before_the_answers_last_canvas(thinking_server):
    body = {"messages": [{"role": "user", "content": "Why is the sky blue?"}], "think": True}
    with thinking_server.stream("POST", "/api/chat", json=body) as response:
        chunks = [json.loads(line)["message"] for line in response.iter_lines()]
    thought = [i for i, c in enumerate(chunks) if c.get("thinking")]
    answered = [i for i, c in enumerate(chunks) if c["content"]]
    assert thought and answered and thought[0] == 0 and thought[-1] < answered[-1]
    assert "".join(c.get("thinking", "") for c in chunks) == THOUGHT.lstrip()
    assert "".join(c["content"] for c in chunks) == ANSWER.lstrip()


def test_openai_streams_reasoning_content_before_the_answers_last_canvas(thinking_server):
    body = {"messages": [{"role": "user", "content": "Why?"}], "stream": True, "reasoning_effort": "high"}
    with thinking_server.stream("POST", "/v1/chat/completions", json=body) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    deltas = [e["choices"][0]["delta"] for e in events]
    thought = [i for i, d in enumerate(deltas) if d.get("reasoning_content")]
    answered = [i for i, d in enumerate(deltas) if d.get("content")]
    assert thought and answered and thought[0] == 0 and thought[-1] < answered[-1]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == THOUGHT.lstrip()
