"""`dgemma serve --detach`: the server as a background process that outlives the command (as Ollama's app keeps its
server running), so `run`, `ps` and `stop` find it; what it says goes to a log in the state folder."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from dgemma_runtime import DgemmaError

LISTENING = re.compile(r"serving .* on (http://\S+)")  # the line `dgemma serve` says once it accepts requests
POLL_SECONDS = 0.1


class DetachError(DgemmaError):
    pass


@dataclass(frozen=True)
class Detached:
    pid: int
    url: str
    log: Path


def log_path() -> Path:
    return platformdirs.user_state_path("dgemma") / "serve.log"


def detach(args: list[str]) -> Detached:
    """Start `dgemma serve ARGS` in a session of its own (Ctrl-C and the terminal closing leave it running), and
    wait until it listens: a model it was asked to load is loaded by then, and a failure is said here."""
    log = log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    start = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dgemma_cli", "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    while True:
        said = log.read_bytes()[start:].decode(errors="replace")
        if found := LISTENING.search(said):
            return Detached(process.pid, found.group(1), log)
        if process.poll() is not None:
            lines = [line.removeprefix("dgemma: error: ") for line in said.splitlines() if line.strip()]
            why = lines[-1] if lines else f"exit status {process.returncode}"
            raise DetachError(f"dgemma serve stopped: {why} (its log: {log})")
        time.sleep(POLL_SECONDS)
