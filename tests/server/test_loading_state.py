"""A model that is still loading: /api/ps reports it with its progress, requests that arrive meanwhile wait for it,
Ollama's load_duration is the runtime's, a server that stops cancels the load, and `show` prints the last load.

The load is the real one (`load_model`, as `dgemma serve` wires it), made slow deterministically by `Gate`, which
holds it at its first progress event until the test opens it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import uvicorn
from dgemma_runtime import LoadEvent, LoadFinished, LoadProgress, LoadStarted, ProgressCallback

from dgemma_cli.app import LoadSettings, load_model
from dgemma_cli.facts import load_rate
from dgemma_cli.models import store
from dgemma_cli.serve.app import create_app, listen
from dgemma_cli.serve.shared import ServeState
from dgemma_cli.serve.worker import Job, LoadCancelled, Worker
from tests.support.cli import PROMPT, dgemma, dgemma_env, facts, ok

WAIT = 60  # seconds before a test gives up on something that should happen (2 shared cores): never a measurement
BODY = {"model": "tiny", "prompt": PROMPT, "stream": False, "options": {"num_predict": 16, "steps": 2}}


class Gate:
    """A loader for the worker: `load_model` whose first progress event waits until `open` is set, meanwhile
    handing the worker that event again and again (as a long load would keep reporting), so a worker that
    raises to cancel the load is heard."""

    def __init__(self) -> None:
        self.open, self.reached = threading.Event(), threading.Event()
        self.started: LoadStarted | None = None
        self.held: LoadProgress | None = None  # the event it waits at
        self.finished: LoadFinished | None = None
        self.cancelled: BaseException | None = None

    def __call__(self, manifest: store.Manifest, progress: ProgressCallback):
        def heard(event: LoadEvent) -> None:
            try:
                progress(event)
                if isinstance(event, LoadStarted):
                    self.started = event
                elif isinstance(event, LoadFinished):
                    self.finished = event
                elif self.held is None:
                    self.held = event
                    self.reached.set()
                    while not self.open.wait(0.01):
                        progress(event)
            except Exception as exc:
                self.cancelled = exc
                raise

        return load_model(manifest.path, LoadSettings("cpu", "auto", None, False), draw=False, progress=heard)[1]


@pytest.fixture
def tiny(checkpoint: Path) -> store.Manifest:
    """The checkpoint stored as 'tiny' in this test's own store."""
    store.save(store.Manifest(name="tiny", tag="latest", path=str(checkpoint), source="local"))
    return store.lookup("tiny")


@contextmanager
def serving(worker: Worker) -> Iterator[httpx.Client]:
    """The app over `worker` on a real socket in this process, as `dgemma serve` runs it."""
    sock = listen("127.0.0.1", 0)
    state = ServeState(worker, None, 300.0)
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    worker.start()
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=WAIT) as http:
            yield http
    finally:
        state.stopping = True  # as `dgemma serve` stops: requests still waiting end, and a held load is cancelled
        worker.stop()
        server.should_exit = True
        thread.join(WAIT)
        sock.close()


def test_ps_reports_the_load_and_requests_that_arrive_meanwhile_wait_for_it(tiny):
    gate = Gate()
    with serving(Worker(gate)) as http:
        before = datetime.now(timezone.utc)
        answers: dict[str, httpx.Response] = {}

        def ask(name: str) -> None:
            answers[name] = http.post("/api/generate", json=BODY)

        first = threading.Thread(target=ask, args=("first",))
        first.start()  # it loads the model
        assert gate.reached.wait(WAIT), "the load never reported progress"
        second = threading.Thread(target=ask, args=("second",))
        second.start()  # it arrives while the model loads
        deadline = time.monotonic() + WAIT
        while (ps := http.get("/api/ps").json())["dgemma"]["queued"] < 1:
            assert time.monotonic() < deadline, f"the second request never queued: {ps}"
            time.sleep(0.05)

        [model] = ps["models"]
        assert model["name"] == "tiny:latest" and "expires_at" not in model
        assert gate.started is not None and gate.held is not None
        assert model["loading"]["phases"] == {"read": {"completed": gate.held.bytes, "total": gate.started.total_bytes}}
        assert gate.held.bytes < gate.started.total_bytes  # caught in the middle
        assert before <= datetime.fromisoformat(model["loading"]["since"]) <= datetime.now(timezone.utc)
        assert first.is_alive() and second.is_alive() and not answers  # both wait: neither failed

        gate.open.set()
        first.join(WAIT)
        second.join(WAIT)
        assert [answers[name].status_code for name in ("first", "second")] == [200, 200], answers
        assert all(answers[name].json()["done"] for name in ("first", "second"))
        assert gate.finished is not None
        assert answers["first"].json()["load_duration"] == round(gate.finished.seconds * 1e9)  # the runtime's

        [model] = http.get("/api/ps").json()["models"]
        assert "loading" not in model and model["expires_at"]
    assert store.last_load(tiny) == gate.finished  # the server's loads are kept for `show` too


def test_stopping_the_server_cancels_a_load_in_progress(tiny):
    gate = Gate()
    worker = Worker(gate)
    worker.start()

    async def load_then_stop() -> None:
        job = Job(tiny, lambda _tokenizer: [1, 2, 3], 300.0)
        worker.submit(job)
        assert await asyncio.to_thread(gate.reached.wait, WAIT), "the load never reported progress"
        worker.stop()

        async def never_gone() -> bool:
            return False

        with pytest.raises(LoadCancelled, match="the server stopped while 'tiny' was loading"):
            await asyncio.wait_for(anext(job.items(never_gone)), WAIT)  # unanswered: the load would go on forever

    try:
        asyncio.run(load_then_stop())
    finally:
        gate.open.set()  # lets a load that was not cancelled end
    assert isinstance(gate.cancelled, LoadCancelled)  # the runtime's load ended at the callback's exception
    assert worker.snapshot().loading is None and worker.snapshot().manifest is None


def test_show_prints_how_long_the_last_load_took(tiny, tmp_path):
    env = dgemma_env(tmp_path)  # the store `tiny` is in (the isolated home's)
    assert "last load" not in facts(ok(dgemma(env, "show", "tiny")).stdout)  # none yet
    loaded = load_model("tiny", LoadSettings("cpu", "auto", None, False), draw=False)[2]
    assert facts(ok(dgemma(env, "show", "tiny")).stdout)["last load"] == load_rate(loaded)
