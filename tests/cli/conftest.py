"""Fixtures for driving the `dgemma` executable: one random chat checkpoint per session, and shared baselines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.checkpoints import write_chat_checkpoint
from tests.support.cli import DGEMMA, FAST, PROMPT, dgemma, dgemma_env, ok


def pytest_collection_modifyitems(items):
    if DGEMMA is None:
        skip = pytest.mark.skip(reason="no 'dgemma' executable: run 'pip install -e .' first")
        for item in items:
            if "tests/cli/" in item.nodeid:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def model(tmp_path_factory) -> Path:
    """A random DiffusionGemma folder speaking dgemma-tiny's tokenizer (canvas 16, 8 denoising steps)."""
    return write_chat_checkpoint(tmp_path_factory.mktemp("chat-model"))


@pytest.fixture(scope="session")
def canvas(model) -> int:
    return json.loads((model / "config.json").read_text())["canvas_length"]


@pytest.fixture(scope="session")
def shared_env(tmp_path_factory) -> dict[str, str]:
    """For session-scoped runs, which outlive any one test's isolated home."""
    return dgemma_env(tmp_path_factory.mktemp("shared-home"))


@pytest.fixture(scope="module")
def spawn(shared_env):
    """`spawn(*args)`: a Terminal running `dgemma ARGS` on a pseudo-terminal, killed at the module's end if a test
    left it running. (Imported here, not above: pexpect is only there for the terminal tests, which skip without it.)"""
    from tests.support.terminal import Terminal

    started: list[Terminal] = []

    def start(*args: str) -> Terminal:
        started.append(Terminal(shared_env, *args))
        return started[-1]

    yield start
    for terminal in started:
        terminal.kill()


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """This test's own home: the same store and HF cache that `isolated_home` gave this process."""
    return dgemma_env(tmp_path, models=Path(os.environ["DGEMMA_MODELS"]), hf_home=Path(os.environ["HF_HOME"]))


@pytest.fixture(scope="session")
def oneshot(model, shared_env):
    """`oneshot(seed, *flags)`: `dgemma run MODEL "Tell me a story" --max-new-tokens 32 --seed SEED FLAGS` with
    stdout piped, memoised so several tests can compare against one run."""
    memo: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}

    def run(seed: int, *flags: str) -> subprocess.CompletedProcess[str]:
        key = (str(seed), *flags)
        if key not in memo:
            memo[key] = ok(dgemma(shared_env, "run", str(model), PROMPT, *FAST, "--seed", str(seed), *flags))
        return memo[key]

    return run


@pytest.fixture
def model_copy(model, tmp_path) -> Path:
    """A private copy of the checkpoint, free to break or to store."""
    return Path(shutil.copytree(model, tmp_path / "chat-model"))
