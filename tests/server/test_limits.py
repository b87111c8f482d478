"""Limits on what a request may ask: each refused with a 400 (or 413) naming the limit, before it waits for the
model; batches that only group prompts of similar lengths; and one request's failure that never fails another.

The limits are checked against a real `dgemma serve` whose model is busy with an endless request: a request
that waited for the model would not be answered until the endless one ends, and /api/ps would count it. The
worker's own rules run over a fake engine."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
from collections.abc import Callable
from types import SimpleNamespace

import httpx
import pytest
from dgemma_runtime import CanvasEvent, FinalEvent, GenerationDefaults, GenerationStats, OptionError

from dgemma_cli.models.store import Manifest
from dgemma_cli.serve.schema import MAX_BODY_BYTES
from dgemma_cli.serve.worker import Finished, Job, Started, Worker
from tests.support.cli import PROMPT

CONTEXT = 1024  # the test checkpoint's max_position_embeddings
LONG_PROMPT = " ".join(["story"] * 3000)  # a token a word: far beyond the context
COUNTED = ("queued", "batches", "completed")  # what a request that waited, or ran, would change


def counted(server) -> dict[str, int]:
    return {k: server.counters()[k] for k in COUNTED}


def idle(server) -> dict[str, int]:
    """The counters once an earlier test's request has gone (a client that left is stopped a moment later)."""
    server.wait_for(lambda c: c["running"] == 0 and c["queued"] == 0, "an idle model")
    return counted(server)


def chat(content: str, **fields) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "stream": False} | fields


# -- each limit is a 400 naming it, before the request waits ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "said"),
    [
        ("/api/generate", {"prompt": PROMPT, "options": {"steps": 1025}}, "must be at most 1024"),
        ("/api/generate", {"prompt": PROMPT, "options": {"stability_threshold": 5000}}, "must be at most 1024"),
        (
            "/api/generate",
            {"prompt": PROMPT, "options": {"steps": 4, "stability_threshold": 5}},
            "stability_threshold must be at most max_denoising_steps (4)",
        ),
        ("/api/generate", {"prompt": PROMPT, "options": {"num_predict": 5000}}, "context length is 1024 tokens"),
        ("/api/chat", chat(PROMPT, options={"num_predict": CONTEXT}), "context length is 1024 tokens"),
        ("/v1/chat/completions", chat(PROMPT, max_tokens=5000), "context length is 1024 tokens"),
        ("/v1/chat/completions", chat(PROMPT, steps=10**6), "must be at most 1024"),
        ("/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 10**9}, "max_new_tokens"),
    ],
)
def test_each_limit_is_a_400_naming_it_while_the_model_is_busy(server, path, body, said):
    with server.endless():
        before = counted(server)
        response = server.http.post(path, json={"model": "tiny", "stream": False} | body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert said in (error["message"] if path.startswith("/v1/") else error)
        assert counted(server) == before  # never queued: the endless request still holds the model


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": "tiny", "prompt": LONG_PROMPT, "stream": False}),
        ("/api/generate", {"model": "tiny", "prompt": LONG_PROMPT, "raw": True, "stream": False}),
        ("/api/chat", chat(LONG_PROMPT)),
        ("/v1/chat/completions", chat(LONG_PROMPT)),
        ("/v1/completions", {"model": "tiny", "prompt": LONG_PROMPT}),
    ],
)
def test_a_prompt_longer_than_the_context_is_a_400_naming_the_context_length(server, path, body):
    with server.endless():
        before = counted(server)
        response = server.http.post(path, json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        message = error["message"] if path.startswith("/v1/") else error
        assert "context length of 1024 tokens" in message and "the prompt is" in message
        assert counted(server) == before


# -- the body -----------------------------------------------------------------------------------------------


def raw_exchange(server, head: str, body: bytes) -> tuple[int, bytes]:
    """Send a request as bytes and read the whole answer (the server closes the connection after a 413)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                break
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_body_over_the_limit_is_a_413_by_its_content_length(server, path):
    before = idle(server)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    status, body = raw_exchange(server, head + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n", b"{")
    assert status == 413 and str(MAX_BODY_BYTES) in body.decode()
    assert (b'"message"' in body) == path.startswith("/v1/")  # each API's own error shape
    assert counted(server) == before


def test_a_chunked_body_over_the_limit_is_a_413_as_it_arrives(server):
    before = idle(server)
    payload = b'{"model": "tiny", "prompt": "' + b"x" * MAX_BODY_BYTES + b'"}'
    chunked = f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n"
    head = "POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, body = raw_exchange(server, head, chunked)
    assert status == 413 and str(MAX_BODY_BYTES) in body.decode()
    assert counted(server) == before


def test_a_body_under_the_limit_is_read_whole(server):
    padding = " " * (MAX_BODY_BYTES - 1000)  # JSON whitespace: a large body, a short prompt
    body = '{"model": "tiny", "prompt": "Hi", "stream": false, "options": {"num_predict": 16}}' + padding
    response = server.http.post("/api/generate", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200 and response.json()["done"]


# -- batching over HTTP ----------------------------------------------------------------------------------


def post_in_background(server, body: dict, results: list[httpx.Response]) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(server.http.post("/api/chat", json=body)))
    thread.start()
    return thread


def test_bad_requests_beside_waiting_ones_fail_alone_and_prompts_of_other_lengths_run_apart(server):
    options = {"num_predict": 16, "steps": 2}
    long_prompt = " ".join(["story"] * 300)  # fits the context, but 10x the short prompts
    good: list[httpx.Response] = []
    with server.endless():
        before = server.counters()
        threads = [post_in_background(server, chat(text, options=options), good) for text in (PROMPT, long_prompt)]
        server.wait_for(lambda c: c["queued"] == 2, "two waiting requests")
        threads.append(post_in_background(server, chat(PROMPT + "!", options=options), good))
        server.wait_for(lambda c: c["queued"] == 3, "three waiting requests")
        for bad in (chat(LONG_PROMPT, options=options), chat(PROMPT, options=options | {"steps": 5000})):
            assert server.http.post("/api/chat", json=bad).status_code == 400
        assert server.counters()["queued"] == 3
    for thread in threads:
        thread.join(timeout=60)
    assert [r.status_code for r in good] == [200, 200, 200] and all(r.json()["done"] for r in good)
    after = server.wait_for(lambda c: c["running"] == 0 and c["completed"] >= before["completed"] + 3, "the three")
    # The two short prompts shared a batch; the long one ran alone.
    assert after["batches"] == before["batches"] + 2
    assert after["completed"] == before["completed"] + 3


# -- the worker's rules, over a fake engine -------------------------------------------------------------------

POISON = 13  # a prompt holding this token makes the fake engine fail, as one too large for memory would
MODEL = Manifest(name="fake", tag="latest", path="/nowhere", source="local")
STATS = GenerationStats(
    prompt_tokens=1,
    generated_tokens=2,
    canvases=1,
    decoder_forwards=1,
    steps_per_canvas=(1,),
    prefill_seconds=0.0,
    encode_seconds=0.0,
    decode_seconds=0.0,
    sample_seconds=0.0,
    total_seconds=0.0,
)


class FakeEngine:
    """Answers each row with one canvas; records the prompt lengths of every batch it is given."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(max_position_embeddings=CONTEXT, canvas_length=16)
        self.defaults = GenerationDefaults()
        self.tokenizer = object()  # the fake prompts render without it
        self.device = SimpleNamespace(type="cpu")
        self.batches: list[list[int]] = []

    def stream(self, rows: list[list[int]], options: object):
        self.batches.append([len(row) for row in rows])
        if any(POISON in row for row in rows):
            raise RuntimeError("out of memory")
        for r in range(len(rows)):
            yield CanvasEvent(r, 0, (5, 1), 1, text="ok", done=True)
        yield FinalEvent(stats=STATS, token_ids=tuple((5, 1) for _ in rows))


async def never() -> bool:
    return False


async def outcome(job: Job) -> list[object] | BaseException:
    items: list[object] = []
    try:
        async for item in job.items(never):
            items.append(item)
    except Exception as exc:
        return exc
    return items


def run_jobs(prompts: list[list[int]]) -> tuple[FakeEngine, list[list[object] | BaseException], dict]:
    """Queue one job per prompt, then let the worker take them; what each job got, and the counters."""
    engine = FakeEngine()

    async def main() -> tuple[list[list[object] | BaseException], dict]:
        worker = Worker(lambda _, __: engine, max_queue=8, max_batch=8)
        render: Callable[[list[int]], Callable] = lambda ids: lambda _tokenizer: ids  # noqa: E731
        jobs = [Job(MODEL, render(ids), math.inf) for ids in prompts]
        for job in jobs:
            worker.submit(job)
        worker.start()
        try:
            results = [await outcome(job) for job in jobs]
        finally:
            worker.stop()
        return results, vars(worker.snapshot())

    results, counters = asyncio.run(main())
    return engine, results, counters


def answered(result: list[object] | BaseException) -> bool:
    return (
        isinstance(result, list)
        and sum(isinstance(item, Started) for item in result) == 1
        and [item.text for item in result if isinstance(item, CanvasEvent)] == ["ok"]
        and isinstance(result[-1], Finished)
    )


def test_a_failing_batch_runs_again_one_by_one_and_fails_only_its_culprit():
    engine, results, counters = run_jobs([[7] * 10, [POISON] * 10, [8] * 10])
    assert engine.batches == [[10, 10, 10], [10], [10], [10]]
    assert answered(results[0]) and answered(results[2])
    assert isinstance(results[1], RuntimeError) and "out of memory" in str(results[1])
    assert counters["completed"] == 3 and counters["batches"] == 4


def test_a_prompt_that_does_not_fit_fails_alone_in_the_worker_too():
    engine, results, _ = run_jobs([[7] * 10, [8] * CONTEXT, [9] * 12])
    assert engine.batches == [[10, 12]]
    assert answered(results[0]) and answered(results[2])
    assert isinstance(results[1], OptionError) and "context length of 1024 tokens" in str(results[1])


def test_only_prompts_of_similar_lengths_share_a_batch():
    # Canvas 16: a batch spans at most 2 (shortest + 16) - 16 tokens.
    engine, results, _ = run_jobs([[7] * 20, [7] * 300, [7] * 56, [7] * 57, [7] * 290])
    assert engine.batches == [[20, 56], [300, 290], [57]]
    assert all(answered(result) for result in results)
