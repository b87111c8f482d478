"""Driving the installed `dgemma` executable against the fake hub, and reading what it says."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DGEMMA = shutil.which("dgemma", path=str(Path(sys.executable).parent)) or shutil.which("dgemma")
REPO = "acme/Tiny-DGemma"
NAME = "acme--tiny-dgemma"  # its store name
NEVER = {  # files the runtime does not read: pull must never fetch them
    "model.gguf": b"GGUF" + bytes(64),
    "pytorch_model.bin": b"pickle" + bytes(64),
    "weights.pt": b"pickle" + bytes(64),
    "README.md": b"# tiny\n",
}
PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def dgemma(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    if DGEMMA is None:
        pytest.skip("no 'dgemma' executable: run 'pip install -e .' first")
    return subprocess.run(
        [DGEMMA, *args], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def failure(result: subprocess.CompletedProcess[str]) -> str:
    """A failed command ends with one `dgemma: error:` line and no traceback; returns the message."""
    assert result.returncode != 0, f"expected a failure\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("dgemma: error: "), result.stderr
    assert result.stderr.count("dgemma: error:") == 1, result.stderr
    return last.removeprefix("dgemma: error: ")
