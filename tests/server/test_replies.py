"""Where each API puts the answer and the thinking, read from events alone (no server, no model)."""

from __future__ import annotations

import asyncio

from dgemma_runtime import CanvasEvent, GenerationStats

from dgemma_cli.models.store import Manifest
from dgemma_cli.serve import ollama as ollama_api
from dgemma_cli.serve import openai as openai_api
from dgemma_cli.serve.worker import Finished, Job, Started

STATS = GenerationStats(
    prompt_tokens=9,
    generated_tokens=3,
    canvases=2,
    decoder_forwards=5,
    steps_per_canvas=(3, 2),
    prefill_seconds=0.01,
    encode_seconds=0.02,
    decode_seconds=0.1,
    sample_seconds=0.01,
    total_seconds=0.2,
)
ITEMS = [
    CanvasEvent(0, 0, (7,), 3, text="", thinking="\nfirst a plan"),
    CanvasEvent(0, 1, (8, 9, 1), 2, text="\n Hello", thinking="", done=True),
    Finished(STATS, prompt_tokens=9, generated_tokens=4, finish_reason="stop"),
]


async def items():
    for item in ITEMS:
        yield item


def ollama_reply(chat: bool) -> ollama_api.Reply:
    job = Job(Manifest(name="m", tag="latest", path="/nowhere", source="local"), None, 0.0)
    return ollama_api.Reply("m", chat, job, Started(0.5))


def test_ollama_chat_and_generate_put_thinking_beside_the_answer():
    async def whole(chat: bool) -> dict:
        return await ollama_reply(chat).whole(items())

    chat, generate = asyncio.run(whole(True)), asyncio.run(whole(False))
    assert chat["message"] == {"role": "assistant", "content": "Hello", "thinking": "first a plan"}
    assert (generate["response"], generate["thinking"]) == ("Hello", "first a plan")
    assert generate["load_duration"] == 500_000_000 and generate["eval_count"] == 4
    assert generate["done_reason"] == "stop" and generate["prompt_eval_count"] == 9


def test_ollama_streams_a_chunk_per_canvas():
    async def stream() -> list[dict]:
        return [chunk async for chunk in ollama_reply(True).chunks(items())]

    first, second, last = asyncio.run(stream())
    assert first["message"] == {"role": "assistant", "content": "", "thinking": "first a plan"}
    assert second["message"] == {"role": "assistant", "content": "Hello"} and not second["done"]
    assert last["done"] and last["message"]["content"] == ""


def test_openai_puts_thinking_in_reasoning_content():
    async def run() -> tuple[dict, list[dict]]:
        whole = await openai_api.Reply("m", True, include_usage=True).whole(items())
        return whole, [c async for c in openai_api.Reply("m", True, include_usage=True).chunks(items())]

    whole, chunks = asyncio.run(run())
    assert whole["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello",
        "reasoning_content": "first a plan",
    }
    assert whole["usage"] == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    assert [c["choices"][0]["delta"] for c in chunks[:3]] == [
        {"role": "assistant", "content": "", "reasoning_content": "first a plan"},
        {"role": "assistant", "content": "Hello"},
        {},
    ]
    assert chunks[2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["total_tokens"] == 13
