"""How the server behaves under load and misuse: batching concurrent requests with every answer intact and in
canvas order, clients that leave, a full queue, bad requests, keep-alive, and a port already taken."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
from dgemma_runtime import TextStream, Tokenizer, load_config

from tests.support.cli import PROMPT, assert_one_line_error, dgemma
from tests.support.hub import FakeHub
from tests.support.pull import PROXIES

CLIENTS = 4
HUB_REPO = "acme/tiny-chat"


def frames_of(server, body: dict) -> list[dict]:
    with server.http.stream("POST", "/api/chat", json=body) as response:
        assert response.status_code == 200
        return [json.loads(line) for line in response.iter_lines()]


def check_intact(lines: list[dict], tokenizer: Tokenizer, eos: tuple[int, ...]) -> None:
    """The text chunks are exactly the text of this request's own canvases, each after its own steps."""
    canvases: list[list[int]] = []  # the last step's ids of each canvas
    text = []
    for line in lines:
        if line.get("type") == "step":
            if line["canvas"] == len(canvases):
                canvases.append([])
            assert line["canvas"] == len(canvases) - 1, "a step of a canvas that is not the current one"
            canvases[-1] = line["ids"]
        elif not line["done"]:
            assert len(text) == len(canvases) - 1, "a text chunk before its canvas, or twice for one"
            text.append(line["message"]["content"])
    stream, kept = TextStream(tokenizer, eos), 0
    expected = ""
    for ids in canvases:
        cut = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
        kept += cut
        expected += stream.feed(ids[:cut])[0]
    assert "".join(text) == expected.lstrip()
    assert lines[-1]["done"] and lines[-1]["eval_count"] == kept


def test_concurrent_clients_share_batches_and_get_their_own_answers_in_order(server, checkpoint):
    tokenizer = Tokenizer(checkpoint / "tokenizer.json")
    eos = load_config(checkpoint)[1].eos_token_ids
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": PROMPT}],
        "frames": True,
        "options": {"num_predict": 64},
    }
    results: list[list[dict]] = [[] for _ in range(CLIENTS)]

    def client(i: int) -> None:
        results[i] = frames_of(server, body)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    with server.endless():  # holds the model while all four queue up behind it
        for thread in threads:
            thread.start()
        server.wait_for(lambda c: c["queued"] == CLIENTS, f"{CLIENTS} waiting requests")
    for thread in threads:
        thread.join(timeout=60)
    assert server.counters()["largest_batch"] == CLIENTS
    for lines in results:
        check_intact(lines, tokenizer, eos)
    steps = [[line["ids"] for line in lines if line.get("type") == "step"] for lines in results]
    assert all(a != b for i, a in enumerate(steps) for b in steps[i + 1 :]), "two clients got the same row"


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_stops_its_generation(server, stream):
    before = server.counters()
    if stream:
        with server.endless():
            server.wait_for(lambda c: c["running"] == 1, "running it")
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/api/generate", json=server.endless_request(stream=False), timeout=1.0)
    after = server.wait_for(lambda c: c["running"] == 0 and c["cancelled"] > before["cancelled"], "stopping it")
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"]
    started = time.monotonic()
    answer = server.http.post("/api/generate", json={"model": "tiny", "prompt": PROMPT, "stream": False})
    assert answer.status_code == 200 and answer.json()["done"]
    assert time.monotonic() - started < 10  # the model is free again (the endless one had minutes to go)


@pytest.mark.parametrize(
    ("path", "body", "status", "said"),
    [
        ("/api/chat", "{not json", 400, "malformed JSON"),
        ("/api/chat", '{"model": "tiny", "messages": "hi"}', 400, "messages"),
        ("/api/generate", '{"model": "tiny", "prompt": "x", "options": {"steps": 0}}', 400, "max_denoising_steps"),
        ("/api/generate", '{"model": "tiny", "prompt": "x", "options": {"steps": "many"}}', 400, "steps"),
        ("/api/generate", '{"model": "tiny", "prompt": "x", "options": {"entropy_bond": 1}}', 400, "entropy_bond"),
        ("/api/generate", '{"model": "tiny", "prompt": "x", "keep_alive": "soon"}', 400, "soon"),
        ("/api/chat", '{"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}', 400, "tool"),
        ("/api/generate", '{"model": "nope", "prompt": "x"}', 404, "nope"),
        ("/api/generate", '{"model": "/etc", "prompt": "x"}', 400, "/etc"),  # a path: never a model name over HTTP
        ("/api/generate", '{"prompt": "x"}', 400, "no model"),
        ("/api/show", '{"model": "nope"}', 404, "nope"),
        ("/api/nothing", "{}", 404, "Not Found"),
    ],
)
def test_bad_ollama_requests_get_their_4xx_and_a_message(server, path, body, status, said):
    response = server.http.post(path, content=body)
    assert response.status_code == status
    assert said in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "said"),
    [
        ("[1, 2]", 400, "JSON object"),
        ('{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "steps": 0}', 400, "max_denoising"),
        ('{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2}', 400, "n:"),
        ('{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "nope"),
    ],
)
def test_bad_openai_requests_get_their_4xx_in_openai_shape(server, body, status, said):
    response = server.http.post("/v1/chat/completions", content=body)
    assert response.status_code == status
    assert said in response.json()["error"]["message"]


def test_the_clients_raise_on_4xx(server):
    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=server.url).generate(model="tiny", prompt="x", options={"steps": 0})
    assert raised.value.status_code == 400
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


@pytest.fixture(scope="module")
def hub(checkpoint) -> Iterator[FakeHub]:
    with FakeHub() as fake:
        fake.add_repo(HUB_REPO, checkpoint)
        yield fake


@pytest.fixture(scope="module")
def small_server(start_server, serve_env, hub):
    """One request may wait; 'tiny' loads at start and answers requests that name no model; pulls from the
    fake hub on 127.0.0.1."""
    online = {k: v for k, v in serve_env.items() if k not in (*PROXIES, "HF_HUB_OFFLINE")}
    online |= {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost"}
    return start_server("--max-queue", "1", "--model", "tiny", "--keep-alive", "-1", env=online)


def test_a_full_queue_answers_503_with_retry_after(small_server):
    waiting: list[httpx.Response] = []
    body = {"prompt": PROMPT, "stream": False, "options": {"num_predict": 16}}
    with small_server.endless(model=""):
        thread = threading.Thread(target=lambda: waiting.append(small_server.http.post("/api/generate", json=body)))
        thread.start()
        small_server.wait_for(lambda c: c["queued"] == 1, "one waiting request")
        refused = small_server.http.post("/api/generate", json=body)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
        assert "busy" in refused.json()["error"]
        client = openai.OpenAI(base_url=f"{small_server.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as raised:
            client.completions.create(model="tiny", prompt=PROMPT)
        assert raised.value.status_code == 503
    thread.join(timeout=30)
    assert waiting[0].status_code == 200 and waiting[0].json()["done"]


def test_keep_alive_loads_and_unloads_like_ollama(small_server):
    client = ollama.Client(host=small_server.url)
    assert [m.model for m in client.ps().models] == ["tiny:latest"]  # --model loaded it before listening
    assert client.ps().models[0].expires_at.year == 9999  # --keep-alive -1
    answer = client.generate(model="tiny", prompt=PROMPT, options={"num_predict": 16}, keep_alive=0)
    assert answer.done and client.ps().models == []
    assert client.generate(model="tiny", keep_alive="1m").done_reason == "load"
    assert [m.model for m in client.ps().models] == ["tiny:latest"]
    assert client.generate(model="tiny", keep_alive=0).done_reason == "unload"
    assert client.ps().models == []


def test_pull_streams_progress_and_stores_the_model(small_server):
    client = ollama.Client(host=small_server.url)
    progress = list(client.pull(HUB_REPO, stream=True))
    assert progress[-1].status == "success"
    weights = [p for p in progress if p.digest == "model.safetensors"]
    assert weights and weights[-1].completed == weights[-1].total > 0
    assert "acme--tiny-chat:latest" in [m.model for m in client.list().models]
    assert client.pull(HUB_REPO).status == "success"  # not streamed: the last status alone
    with pytest.raises(ollama.ResponseError):
        client.pull("acme/missing")


def test_a_busy_port_is_one_line_error(server, serve_env):
    result = dgemma(serve_env, "serve", "--port", str(server.port))
    assert "cannot listen on 127.0.0.1" in assert_one_line_error(result, 1)
    result = dgemma(serve_env | {"DGEMMA_HOST": f"127.0.0.1:{server.port}"}, "serve")
    assert str(server.port) in assert_one_line_error(result, 1)
