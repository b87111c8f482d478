"""Requests and states that used to end in a 500 with a traceback: values that are simply invalid (a 400 with a
one-line message, streamed or not), streams that fail after their first byte (an error object the clients raise
on), pulls that fail (the hub's answer as the status), a store with a broken entry (skipped, said once), and
Ctrl-C with a stream open (the stream ends, nothing is printed)."""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import ollama
import openai
import pytest
import uvicorn
from dgemma_runtime import CanvasEvent
from starlette.testclient import TestClient

from dgemma_cli.app import LoadSettings, load_model
from dgemma_cli.models import store
from dgemma_cli.serve.app import create_app, listen
from dgemma_cli.serve.shared import ServeState
from dgemma_cli.serve.worker import Worker
from tests.support.cli import PROMPT, dgemma, dgemma_env, ok
from tests.support.hub import FakeHub
from tests.support.pull import PROXIES

TINY = {"num_predict": 16, "steps": 2}  # one canvas of the test model, two steps
FIRE = "the canvas caught fire"


def refusal(response: httpx.Response, status: int) -> str:
    """The error message of a refused request, checked to be one line in its API's shape."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert isinstance(message, str) and message and "\n" not in message, message
    return message


@contextmanager
def no_new_traceback(server) -> Iterator[None]:
    before = len(server.log.read_text())
    yield
    time.sleep(0.2)  # the server's stderr is a file: let it catch up
    assert "Traceback" not in server.log.read_text()[before:]


# -- values that are simply invalid: a 400 before the first byte ----------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000
DIGITS = "1" + "0" * 5000


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("path", "body", "said"),
    [
        ("/api/generate", '{"model": "tiny", "prompt": "x", "options": {"seed": 18446744073709551616}}', "64 bits"),
        ("/api/generate", '{"model": "tiny", "prompt": "x", "options": {"seed": 1.8446744073709552e19}}', "seed"),
        ("/v1/completions", '{"model": "tiny", "prompt": "x", "seed": 18446744073709551616}', "64 bits"),
        ("/v1/completions", '{"model": "tiny", "prompt": "x", "seed": 1.8446744073709552e19}', "seed"),
        ("/api/generate", '{"model": "tiny", "prompt": "\\ud800"}', "lone UTF-16 surrogate"),
        ("/api/chat", '{"model": "tiny", "messages": [{"role": "user", "\\udc00": 1}]}', "lone UTF-16 surrogate"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "a\\udfffb"}]}', "surrogate"),
        ("/api/generate", '{"model": "tiny", "prompt": "x", "options": {"x": ' + DEEP + "}}", "nested too deeply"),
        ("/v1/completions", '{"model": "tiny", "prompt": "x", "stop": ' + DEEP + "}", "nested too deeply"),
        ("/api/generate", '{"model": "tiny", "prompt": "x", "options": {"num_predict": ' + DIGITS + "}}", "64 bits"),
        ("/v1/completions", '{"model": "tiny", "prompt": "x", "max_tokens": -' + DIGITS + "}", "64 bits"),
        ("/api/generate", '{"model": "tiny", "prompt": "x", "options": {"t_min": ' + DIGITS + "e9}}", "finite"),
        ("/api/generate", '{"model": "tiny", "prompt": "x", "keep_alive": NaN}', "NaN is not a JSON number"),
        # Loose coercion: `true` is no number (pydantic and the runtime both read it as 1)
        ("/api/generate", '{"model": "tiny", "prompt": "x", "options": {"steps": true}}', "steps"),
        ("/api/generate", '{"model": "tiny", "prompt": "x", "keep_alive": true}', "keep_alive"),
        ("/v1/completions", '{"model": "tiny", "prompt": "x", "steps": true}', "steps"),
        ("/v1/completions", '{"model": "tiny", "prompt": "x", "max_tokens": true}', "max_tokens"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "seed": false}', "seed"),
    ],
)
def test_invalid_values_are_a_400_with_one_line_even_when_streamed(server, path, body, said, stream):
    body = body[:-1] + f', "stream": {json.dumps(stream)}}}'  # streamed: still refused before the first byte
    with no_new_traceback(server):
        assert said in refusal(server.http.post(path, content=body), 400)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": "tiny", "prompt": "😀", "options": TINY | {"seed": 2**64 - 1}}),  # the largest
        ("/v1/completions", {"model": "tiny", "prompt": "\ud83d\ude00", "seed": 2**64 - 1, "max_tokens": 16}),
    ],
)
def test_what_borders_on_invalid_is_served(server, path, body):
    """A surrogate pair is an emoji, not a lone surrogate; 2**64 - 1 is still a 64-bit seed."""
    content = json.dumps(body | {"stream": False})  # ensure_ascii: the emoji goes as "\ud83d\ude00"
    assert "\\ud83d\\ude00" in content
    response = server.http.post(path, content=content)
    assert response.status_code == 200, response.text


def test_a_keep_alive_of_ages_keeps_the_server_answering(server):
    """1e300 seconds is finite but beyond what a lock's timeout takes: the model worker must not die of it."""
    body = {"model": "tiny", "prompt": "x", "stream": False, "keep_alive": 1e300, "options": TINY}
    for _ in range(2):
        assert server.http.post("/api/generate", json=body).status_code == 200
    assert server.http.post("/api/generate", json=body | {"keep_alive": 0}).status_code == 200  # and it unloads


# -- a stream that fails after its first byte -----------------------------------------------------------------


@contextmanager
def running(app) -> Iterator[str]:
    """`app` on a real socket, in this process (so its engine can be rigged and its log read)."""
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def catches_fire(checkpoint: Path) -> Iterator[str]:
    """A server whose engine fails after its first canvas, with a message of two lines."""

    def loader(manifest: store.Manifest, _progress: object):
        engine = load_model(manifest.path, LoadSettings("cpu", "auto", None, False))[1]
        whole = engine.stream

        def stream(*args, **kwargs):
            for event in whole(*args, **kwargs):
                yield event
                if isinstance(event, CanvasEvent):
                    raise RuntimeError(f"{FIRE}\nand a second line")

        engine.stream = stream
        return engine

    tiny = store.Manifest(name="tiny", tag="latest", path=str(checkpoint), source="local")
    worker = Worker(loader)
    worker.start()
    with running(create_app(ServeState(worker, tiny, 60.0))) as url:
        yield url
    worker.stop()


def test_a_stream_that_fails_midway_ends_with_ollamas_error_line(catches_fire, caplog):
    body = {"model": "tiny", "prompt": PROMPT, "options": TINY}
    with httpx.stream("POST", f"{catches_fire}/api/generate", json=body, timeout=60) as response:
        assert response.status_code == 200  # the failure came after the first chunk
        lines = [json.loads(line) for line in response.iter_lines()]
    assert lines[0]["done"] is False and lines[-1] == {"error": FIRE}
    with pytest.raises(ollama.ResponseError) as raised:
        list(ollama.Client(host=catches_fire).generate(model="tiny", prompt=PROMPT, options=TINY, stream=True))
    assert raised.value.error == FIRE
    logged = [r for r in caplog.records if r.name == "dgemma.serve" and r.exc_info]
    assert len(logged) == 2 and FIRE in str(logged[0].exc_info[1])  # the traceback goes to the log, once each


def test_a_stream_that_fails_midway_ends_with_openais_error_event_then_done(catches_fire):
    body = {"model": "tiny", "prompt": PROMPT, "stream": True, "max_tokens": 16, "steps": 2}
    with httpx.stream("POST", f"{catches_fire}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["message"] == FIRE and error["type"] == "server_error" and error["code"] == 500
    client = openai.OpenAI(base_url=f"{catches_fire}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError, match=FIRE):
        list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16, stream=True, extra_body=TINY))


# -- pull: the hub's answer as the status ---------------------------------------------------------------------


def online_env(serve_env: dict[str, str], endpoint: str) -> dict[str, str]:
    online = {k: v for k, v in serve_env.items() if k not in (*PROXIES, "HF_HUB_OFFLINE")}
    return online | {"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost"}


@pytest.fixture(scope="module")
def hub_server(start_server, serve_env, checkpoint) -> Iterator[object]:
    with FakeHub() as hub:
        hub.add_repo("acme/gated", checkpoint, gated=True)
        yield start_server(env=online_env(serve_env, hub.url))


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_pull_answers_with_the_hubs_status(hub_server, stream):
    def pull(name: str) -> httpx.Response:
        return hub_server.http.post("/api/pull", json={"model": name, "stream": stream})

    with no_new_traceback(hub_server):
        assert "not found on the Hugging Face hub" in refusal(pull("acme/missing"), 404)
        assert "unknown model 'llama3'" in refusal(pull("llama3"), 404)
        assert "is gated" in refusal(pull("acme/gated"), 401)  # no token: the hub's 401
        assert "built into dgemma" in refusal(pull("dgemma-tiny"), 400)
        assert "invalid model name" in refusal(pull("No Such Name!"), 400)


def test_a_pull_from_an_unreachable_hub_is_a_503(server):
    """The shared server is offline (HF_HUB_OFFLINE): like an unreachable hub, only the cache can serve a pull."""
    with no_new_traceback(server):
        response = server.http.post("/api/pull", json={"model": "acme/elsewhere"})
        assert "not in the Hugging Face cache" in refusal(response, 503)


def test_a_pull_while_the_hub_is_down_is_a_503(start_server, serve_env):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    server = start_server(env=online_env(serve_env, f"http://127.0.0.1:{closed}"))
    with no_new_traceback(server):
        response = server.http.post("/api/pull", json={"model": "acme/elsewhere", "stream": False})
        assert "cannot reach the Hugging Face hub" in refusal(response, 503)
        assert int(response.headers["Retry-After"]) > 0


# -- a store with a broken entry ------------------------------------------------------------------------------


def break_the_store(checkpoint: Path, tmp: Path) -> None:
    """'tiny' and three entries that cannot be listed: corrupt JSON, a field of the wrong type, a folder gone."""
    store.save(store.Manifest(name="tiny", tag="latest", path=str(checkpoint), source="local"))
    store.save(store.Manifest(name="gone", tag="latest", path=str(tmp / "deleted-since"), source="local"))
    manifests = store.models_dir() / "manifests"
    (manifests / "corrupt").mkdir()
    (manifests / "corrupt" / "latest.json").write_text('{"name": "corrupt", ')
    (manifests / "typed").mkdir()
    typed = {"name": "typed", "tag": "latest", "path": str(checkpoint), "source": "local", "modified": 17}
    (manifests / "typed" / "latest.json").write_text(json.dumps(typed))


def test_the_server_lists_the_rest_of_a_broken_store_and_logs_each_entry_once(checkpoint, tmp_path, caplog):
    break_the_store(checkpoint, tmp_path)
    caplog.set_level(logging.WARNING, "dgemma.serve")
    with TestClient(create_app(ServeState(None, None, 0.0)), base_url="http://localhost") as client:  # type: ignore[arg-type]
        for _ in range(2):
            tags = client.get("/api/tags")
            models = client.get("/v1/models")
            assert tags.status_code == models.status_code == 200
            assert {m["name"] for m in tags.json()["models"]} == {"dgemma-tiny:latest", "tiny:latest"}
            assert {m["id"] for m in models.json()["data"]} == {"dgemma-tiny:latest", "tiny:latest"}
    said = sorted(r.getMessage() for r in caplog.records if r.name == "dgemma.serve")
    assert len(said) == 3, said
    assert "corrupt" in said[0] and "unreadable manifest" in said[0]
    assert "deleted-since" in said[1] and "gone" in said[1]
    assert "typed" in said[2] and "unreadable manifest" in said[2]


def test_a_model_whose_folder_is_gone_is_a_404_that_says_so(checkpoint, tmp_path):
    break_the_store(checkpoint, tmp_path)
    with TestClient(create_app(ServeState(None, None, 0.0)), base_url="http://localhost") as client:  # type: ignore[arg-type]
        for path, body in (("/api/show", {"model": "gone"}), ("/api/generate", {"model": "gone", "prompt": "x"})):
            response = client.post(path, json=body)
            assert response.status_code == 404, response.text
            assert "deleted-since is gone" in response.json()["error"]


def test_dgemma_list_skips_a_broken_entry_with_a_warning(checkpoint, tmp_path, monkeypatch):
    env = dgemma_env(tmp_path / "home")
    monkeypatch.setenv("DGEMMA_MODELS", env["DGEMMA_MODELS"])
    break_the_store(checkpoint, tmp_path)
    result = ok(dgemma(env, "list"))
    assert "tiny" in result.stdout and "corrupt" not in result.stdout and "gone" not in result.stdout
    warnings = result.stderr.splitlines()
    assert len(warnings) == 3 and all(w.startswith("warning: skipping ") for w in warnings), result.stderr


# -- Ctrl-C with a stream open --------------------------------------------------------------------------------


def test_ctrl_c_with_a_stream_open_ends_the_stream_and_says_nothing(start_server):
    server = start_server()
    body = server.endless_request(frames=True)
    with server.http.stream("POST", "/api/generate", json=body) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["type"] == "step"  # generating
        server.process.send_signal(signal.SIGINT)
        rest = [json.loads(line) for line in lines]  # the body ends whole: no broken chunked encoding
    assert rest[-1] == {"error": "the server is shutting down"}
    assert server.process.wait(timeout=10) == 130  # as any command interrupted
    log = server.log.read_text()
    assert "Traceback" not in log and "CancelledError" not in log, log
