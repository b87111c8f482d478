"""What `dgemma run` relies on when it is the server's client: a stream with `"frames": true` carries every step,
each finished canvas and the statistics; and structured output (Ollama's `format`, OpenAI's `response_format`) is
refused with a 400, not ignored."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import PROMPT

TINY = {"num_predict": 16, "steps": 2}
MESSAGES = [{"role": "user", "content": PROMPT}]


def streamed(server, body: dict) -> list[dict]:
    with server.http.stream("POST", "/api/generate", json=body) as response:
        assert response.status_code == 200
        return [json.loads(line) for line in response.iter_lines()]


def test_frames_carry_every_step_each_canvas_and_the_statistics(server):
    lines = streamed(
        server, {"model": "tiny", "prompt": PROMPT, "frames": True, "options": {"seed": 1, "num_predict": 32}}
    )
    steps = [line for line in lines if line.get("type") == "step"]
    *said, done = [line for line in lines if "type" not in line]
    canvases = [chunk["canvas"] for chunk in said]
    assert [canvas["canvas"] for canvas in canvases] == list(range(len(canvases))) and canvases
    for canvas in canvases:  # a canvas is its last step, cut after an end of turn
        last = [step for step in steps if step["canvas"] == canvas["canvas"]][-1]
        assert canvas["steps"] == last["step"] and last["ids"][: len(canvas["ids"])] == canvas["ids"]
    assert "".join(canvas["text"] for canvas in canvases).lstrip() == "".join(chunk["response"] for chunk in said)
    stats = done["stats"]
    assert stats["decoder_forwards"] == len(steps) and stats["steps_per_canvas"] == [c["steps"] for c in canvases]
    assert stats["generated_tokens"] == done["eval_count"] == sum(len(c["ids"]) for c in canvases)

    plain = streamed(server, {"model": "tiny", "prompt": PROMPT, "options": {"seed": 1, "num_predict": 32}})
    assert not any("canvas" in line or "stats" in line or "type" in line for line in plain)  # Ollama's shape


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"prompt": PROMPT, "format": "json"}),
        ("/api/chat", {"messages": MESSAGES, "format": {"type": "object", "properties": {"a": {"type": "string"}}}}),
        ("/v1/chat/completions", {"messages": MESSAGES, "response_format": {"type": "json_object"}}),
        ("/v1/completions", {"prompt": PROMPT, "response_format": {"type": "json_schema", "json_schema": {}}}),
    ],
)
def test_structured_output_is_refused(server, path, body):
    response = server.http.post(path, json={"model": "tiny", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert "not supported for diffusion models yet" in message


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"prompt": PROMPT, "format": "", "stream": False, "options": TINY}),
        ("/v1/chat/completions", {"messages": MESSAGES, "response_format": {"type": "text"}, "max_tokens": 16}),
    ],
)
def test_plain_text_asked_for_explicitly_is_served(server, path, body):
    assert server.http.post(path, json={"model": "tiny", **body}).status_code == 200
