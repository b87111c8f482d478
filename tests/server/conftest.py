"""A real `dgemma serve` process (uvicorn on 127.0.0.1, a free port) over a random chat checkpoint stored as
'tiny', and the helpers that talk to it."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from dgemma_runtime.options import MAX_STEPS

from tests.support.checkpoints import write_chat_checkpoint
from tests.support.cli import DGEMMA, dgemma_env, store_model

STARTUP_SECONDS = 60  # imports and a first model load on 2 shared cores
LISTENING = re.compile(r"on (http://127\.0\.0\.1:\d+)")
# A request that runs for minutes within the limits: every canvas takes the most steps allowed (no entropy is
# below 0, so none converges), and the answer length is left open, so canvases follow until the context is full
# or an end of turn comes: with this seed, 48 canvases of 1024 steps (about 50,000 forwards) on the CPU.
ENDLESS = {"steps": MAX_STEPS, "confidence_threshold": 0, "seed": 0}


def pytest_collection_modifyitems(items):
    if DGEMMA is None:
        for item in items:
            if "tests/server/" in item.nodeid:
                item.add_marker(pytest.mark.skip(reason="no 'dgemma' executable: run 'pip install -e .' first"))


class Server:
    def __init__(self, process: subprocess.Popen, url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log
        self.http = httpx.Client(base_url=url, timeout=60)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def ps(self) -> dict:
        return self.http.get("/api/ps").json()

    def counters(self) -> dict:
        return self.ps()["dgemma"]

    def wait_for(self, condition, what: str, seconds: float = 20) -> dict:
        """Poll /api/ps until `condition(counters)` holds."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            counters = self.counters()
            if condition(counters):
                return counters
            time.sleep(0.05)
        raise AssertionError(f"the server never got to {what}: {self.counters()}")

    @staticmethod
    def endless_request(**fields) -> dict:
        return {"model": "tiny", "prompt": "Tell me a story", "options": ENDLESS} | fields

    @contextmanager
    def endless(self, **fields) -> Iterator[httpx.Response]:
        """A generation that only ends when its client leaves: streams frames; running once this yields."""
        with self.http.stream("POST", "/api/generate", json=self.endless_request(frames=True, **fields)) as response:
            assert response.status_code == 200
            lines = response.iter_lines()  # kept: dropping the iterator would close the connection
            next(lines)  # its first step: it holds the model now
            yield response

    def stop(self) -> None:
        self.http.close()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return write_chat_checkpoint(tmp_path_factory.mktemp("served-model"))


@pytest.fixture(scope="session")
def serve_env(tmp_path_factory, checkpoint) -> dict[str, str]:
    """An isolated home whose store holds the checkpoint as 'tiny'."""
    env = dgemma_env(tmp_path_factory.mktemp("serve-home"))
    store_model(env, "tiny", checkpoint)
    return env


@pytest.fixture(scope="session")
def start_server(serve_env, tmp_path_factory):
    started: list[Server] = []

    def start(*flags: str, env: dict[str, str] | None = None) -> Server:
        log = tmp_path_factory.mktemp("serve-log") / "stderr.txt"
        with log.open("w") as err:
            process = subprocess.Popen(
                [DGEMMA, "serve", "--port", "0", *flags],
                env=env or serve_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while not (found := LISTENING.search(log.read_text())):
            assert process.poll() is None, f"dgemma serve exited {process.returncode}: {log.read_text()}"
            assert time.monotonic() < deadline, f"dgemma serve did not start: {log.read_text()}"
            time.sleep(0.1)
        server = Server(process, found.group(1), log)
        started.append(server)
        assert server.http.get("/api/version").status_code == 200
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server) -> Server:
    """The shared server: models load on first use, four requests may wait."""
    return start_server("--max-queue", "4")
