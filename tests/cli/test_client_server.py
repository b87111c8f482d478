"""`dgemma run`, `ps` and `stop` as clients of a running `dgemma serve` (started with `serve --detach`): the model
stays loaded between commands, the answers and frames are the in-process ones, and the client imports no torch."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dgemma_cli.models import store
from tests.support.cli import (
    FAST,
    NO_SERVER,
    PROMPT,
    TIMEOUT,
    Screen,
    assert_one_line_error,
    dgemma,
    dgemma_env,
    ok,
    squeeze,
)
from tests.support.imports import heavy_imports
from tests.support.terminal import PROMPT_MARK, Terminal


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    env: dict[str, str]  # DGEMMA_HOST names the server
    url: str
    http: httpx.Client

    def ps(self) -> dict:
        return self.http.get("/api/ps").json()

    def unload(self) -> None:
        self.http.post("/api/generate", json={"model": "mine", "keep_alive": 0}).raise_for_status()


@pytest.fixture(scope="module")
def served(model, tmp_path_factory) -> Iterator[Served]:
    """`dgemma serve --detach --keep-alive 10m` on a free port, its store holding the test checkpoint as 'mine'."""
    env = dgemma_env(tmp_path_factory.mktemp("client-home")) | {"DGEMMA_HOST": f"127.0.0.1:{free_port()}"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DGEMMA_MODELS", env["DGEMMA_MODELS"])
        store.save(store.Manifest(name="mine", tag="latest", path=str(model), source="local"))
    started = ok(dgemma(env, "serve", "--detach", "--keep-alive", "10m"))
    pid = int(re.search(r"\(pid (\d+);", started.stdout).group(1))
    url = re.search(r"on (http://[\d.:]+)", started.stdout).group(1)
    assert url == f"http://{env['DGEMMA_HOST']}"
    log = Path(env["XDG_STATE_HOME"]) / "dgemma" / "serve.log"
    assert log.exists() and "serving" in log.read_text()
    with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        yield Served(env, url, http)
    os.kill(pid, signal.SIGINT)  # not our child (it left the command that started it): wait for it to go
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def untimed(record: dict) -> dict:
    """A --json or --frames record without what depends on the clock."""
    record = {k: v for k, v in record.items() if k != "t"}
    if record.get("stats"):
        record["stats"] = {k: v for k, v in record["stats"].items() if "seconds" not in k and "per_second" not in k}
    return record


def test_a_second_run_finds_the_model_loaded_and_answers_as_in_process(served, oneshot):
    served.unload()
    before = served.ps()["dgemma"]
    first = ok(dgemma(served.env, "run", "mine", PROMPT, *FAST, "--seed", "1", "--verbose"))
    second = ok(dgemma(served.env, "run", "mine", PROMPT, *FAST, "--seed", "1", "--verbose"))
    after = served.ps()["dgemma"]
    assert after["loads"] == before["loads"] + 1  # the first run loaded it; the second found it resident
    assert after["completed"] == before["completed"] + 2
    assert first.stdout == second.stdout == oneshot(1).stdout  # the same seed, the in-process answer
    for said in (first.stderr, second.stderr):
        assert f"runs in:              dgemma serve at {served.url}\n" in said
        assert "decoder forwards:" in said and "tokens per forward:" in said
    assert re.search(r"^load duration: +0\.000s$", second.stderr, flags=re.MULTILINE), second.stderr
    assert not re.search(r"^load duration: +0\.000s$", first.stderr, flags=re.MULTILINE), first.stderr


def test_json_and_frames_through_the_server_are_the_in_process_ones(served, oneshot):
    remote = json.loads(ok(dgemma(served.env, "run", "mine", PROMPT, *FAST, "--seed", "1", "--json")).stdout)
    local = json.loads(oneshot(1, "--json").stdout)
    assert remote["model"] == "mine"
    assert untimed(remote) | {"model": ""} == untimed(local) | {"model": ""}
    remote_frames = ok(dgemma(served.env, "run", "mine", PROMPT, *FAST, "--seed", "1", "--frames")).stdout
    local_frames = oneshot(1, "--frames").stdout
    assert [untimed(json.loads(line)) for line in remote_frames.splitlines()] == [
        untimed(json.loads(line)) for line in local_frames.splitlines()
    ]


def test_ps_lists_the_resident_model_and_stop_unloads_it(served):
    ok(dgemma(served.env, "run", "mine", PROMPT, *FAST))
    (resident,) = served.ps()["models"]
    header, row = ok(dgemma(served.env, "ps")).stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert row.split()[:2] == ["mine:latest", resident["digest"][:12]]
    assert "100% CPU" in row and f" {resident['context_length']} " in row
    assert re.search(r"\b\d+ minutes from now$", row.rstrip()), row  # --keep-alive 10m, the server's
    listed = [line.split() for line in ok(dgemma(served.env, "list")).stdout.splitlines()]
    assert ["mine:latest", resident["digest"][:12]] in [line[:2] for line in listed]  # the same ID as `list`

    ok(dgemma(served.env, "stop", "mine"))
    assert served.ps()["models"] == []
    assert ok(dgemma(served.env, "ps")).stdout.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert "'mine' is not loaded" in assert_one_line_error(dgemma(served.env, "stop", "mine"), exit_code=1)


def test_keep_alive_zero_unloads_the_model_after_the_answer(served):
    assert ok(dgemma(served.env, "run", "mine", PROMPT, *FAST, "--keep-alive", "0")).stdout.strip()
    assert served.ps()["models"] == []


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (("mine", "--device", "cpu"), "this process (with --device, which the server's model cannot take)"),
        (("{model}",), "this process (a model folder is loaded by whoever names it)"),
    ],
)
def test_what_the_server_cannot_honour_runs_in_process(served, model, oneshot, args, where):
    before = served.ps()["dgemma"]
    argv = [arg.format(model=model) for arg in args]
    result = ok(dgemma(served.env, "run", argv[0], PROMPT, *FAST, "--seed", "1", "--verbose", *argv[1:]))
    assert result.stdout == oneshot(1).stdout
    assert f"runs in:              {where}\n" in result.stderr
    assert served.ps()["dgemma"]["completed"] == before["completed"]  # the server did nothing


def test_without_a_server_run_works_in_process_and_ps_stop_say_so(served):
    env = served.env | {"DGEMMA_HOST": NO_SERVER}  # the same store, no server
    result = ok(dgemma(env, "run", "mine", PROMPT, *FAST, "--verbose"))
    assert f"runs in:              this process (no dgemma server at http://{NO_SERVER})\n" in result.stderr
    for command in (("ps",), ("stop", "mine")):
        message = assert_one_line_error(dgemma(env, *command), exit_code=1)
        assert f"no dgemma server answers at http://{NO_SERVER}" in message and "dgemma serve --detach" in message


def test_the_client_side_of_run_ps_and_stop_imports_no_torch(served):
    result, imported = heavy_imports(served.env, "run", "mine", PROMPT, *FAST, "--seed", "1")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
    assert imported == set()
    for command in (("ps",), ("stop", "mine")):
        result, imported = heavy_imports(served.env, *command)
        assert result.returncode == 0, result.stderr
        assert imported == set()


def test_the_chat_through_the_server_keeps_the_model_loaded(served, model, oneshot):
    ok(dgemma(served.env, "run", "mine", PROMPT, *FAST))  # resident
    before = served.ps()["dgemma"]
    terminal = Terminal(served.env, "run", "mine", *FAST, "--seed", "1")
    try:
        terminal.expect(PROMPT_MARK)
        terminal.ask(PROMPT)
        terminal.say("/set parameter bogus 1", "the options are")  # the REPL's own commands, here too
        terminal.expect(PROMPT_MARK)
        terminal.say("/load mine", re.escape("Loading model 'mine'"))  # the server's: resident already
        terminal.expect(PROMPT_MARK)
        terminal.say(f"/load {model}", "the server loads stored models, not folders")
        terminal.expect(PROMPT_MARK)
        terminal.child.sendline("/bye")
        assert terminal.wait() == 0
    finally:
        terminal.kill()
    after = served.ps()["dgemma"]
    assert after["loads"] == before["loads"]  # neither the chat nor its /load of the same model loaded it again
    assert after["completed"] == before["completed"] + 2  # the answer, and /load's request
    screen = Screen().feed(terminal.transcript).text
    assert squeeze(oneshot(1).stdout) in squeeze(screen)  # the one-shot answer, as the chat's first turn
