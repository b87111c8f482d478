"""Driving the installed `dgemma` executable: where it is, the environment it gets, and reading what it says."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dgemma_cli

# The console script next to this interpreter (a pyenv shim or a stale one elsewhere on PATH would be slower or
# wrong); PATH as a fallback.
DGEMMA = shutil.which("dgemma", path=str(Path(sys.executable).parent)) or shutil.which("dgemma")
TIMEOUT = 120  # seconds for one command: generous, the 2 cores are shared
NO_SERVER = "127.0.0.1:1"
PROMPT = "Tell me a story"
FAST = ("--max-new-tokens", "32")  # two canvases of the 16-token test model
BUILTIN_CONFIG = Path(dgemma_cli.__file__).parent / "builtin" / "dgemma-tiny" / "config.json"
needs_builtin = pytest.mark.skipif(
    not BUILTIN_CONFIG.exists(),
    reason=f"dgemma-tiny has no weights yet ({BUILTIN_CONFIG} is missing while it trains); "
    "'list' and 'rm' read every built-in model",
)

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]")
# Variables that would make Rich or Python behave differently from a user's plain shell.
SCRUBBED = ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "PYTHONSTARTUP")


def dgemma_env(home: Path, models: Path | None = None, hf_home: Path | None = None) -> dict[str, str]:
    """The environment of one `dgemma` process: its own store, caches and state, one thread, no history file."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env |= {
        "DGEMMA_MODELS": str(models or home / "models"),
        "HF_HOME": str(hf_home or home / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "XDG_STATE_HOME": str(home / "xdg-state"),
        "XDG_DATA_HOME": str(home / "xdg-data"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "DGEMMA_NOHISTORY": "1",
        # `run` asks a server at DGEMMA_HOST first: nothing listens on port 1, so a test never reaches a developer's
        # own `dgemma serve`; tests of the client point it at the server they start.
        "DGEMMA_HOST": NO_SERVER,
    }
    return env


def store_model(env: dict[str, str], name: str, folder: Path) -> None:
    """Save `folder` as `name` in the store of `env` (what `dgemma` started with `env` sees)."""
    from dgemma_cli.models import store

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DGEMMA_MODELS", env["DGEMMA_MODELS"])
        store.save(store.Manifest(name=name, tag="latest", path=str(folder), source="local"))


def dgemma(env: dict[str, str], *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `dgemma ARGS` with stdout and stderr piped; stdin is `input`, or empty (not a terminal) when None."""
    return subprocess.run(
        [DGEMMA, *args],
        env=env,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert a clean success and hand the result on."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def assert_one_line_error(result: subprocess.CompletedProcess[str], exit_code: int | None = None) -> str:
    """A failure is exactly one 'dgemma: error: ...' line on stderr, nothing on stdout; returns the message."""
    if exit_code is None:
        assert result.returncode != 0, f"expected a failure, got exit 0\nstdout: {result.stdout}"
    else:
        assert result.returncode == exit_code, f"exit {result.returncode}, expected {exit_code}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith("dgemma: error: "), lines[0]
    assert result.stdout == "", result.stdout
    return lines[0].removeprefix("dgemma: error: ")


def facts(shown: str) -> dict[str, str]:
    """`dgemma show`'s two-column table as {label: value}."""
    return dict(re.findall(r"^(\S+(?: \S+)*?) {2,}(.+?)\s*$", shown, flags=re.MULTILINE))


def plain(text: str) -> str:
    """Terminal output without its escape sequences."""
    return ANSI.sub("", text)


def squeeze(text: str) -> str:
    """Text without whitespace, with control characters as the live view shows them (a mark): compares an
    answer with the same answer as a terminal shows it, wrapped to its width."""
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "·", re.sub(r"[ \t\n\r]+", "", text))


class Screen:
    """Just enough of a terminal to see what stays on it: text, CR/LF, cursor moves, line and screen erases.
    Rows are kept without limit (scrollback included); colours and modes are ignored."""

    TOKEN = re.compile(r"\x1b\[([0-?]*)[ -/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[^\[\]]|([\s\S])")

    def __init__(self) -> None:
        self.lines: list[list[str]] = [[]]
        self.row = self.col = 0

    @property
    def text(self) -> str:
        return "\n".join("".join(line).rstrip() for line in self.lines).strip("\n")

    def feed(self, data: str) -> Screen:
        for match in self.TOKEN.finditer(data):
            params, command, char = match.groups()
            if command:
                self._csi(params, command)
            elif char:
                self._char(char)
        return self

    def _goto(self, row: int) -> None:
        self.row = max(0, row)
        while len(self.lines) <= self.row:
            self.lines.append([])

    def _csi(self, params: str, command: str) -> None:
        n = int(params) if params.isdigit() else 0
        line = self.lines[self.row]
        if command == "A":
            self._goto(self.row - max(n, 1))
        elif command == "B":
            self._goto(self.row + max(n, 1))
        elif command == "C":
            self.col += max(n, 1)
        elif command == "D":
            self.col = max(0, self.col - max(n, 1))
        elif command == "G":
            self.col = max(n, 1) - 1
        elif command == "K":
            if n == 2:
                line.clear()
            elif n == 1:
                line[: self.col + 1] = [" "] * min(len(line), self.col + 1)
            else:
                del line[self.col :]
        elif command == "J":
            del line[self.col :]
            del self.lines[self.row + 1 :]

    def _char(self, char: str) -> None:
        if char == "\n":
            self._goto(self.row + 1)
        elif char == "\r":
            self.col = 0
        elif char == "\b":
            self.col = max(0, self.col - 1)
        elif char >= " " and char != "\x7f":
            line = self.lines[self.row]
            line.extend(" " * (self.col + 1 - len(line)))
            line[self.col] = char
            self.col += 1
