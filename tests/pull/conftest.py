"""Fixtures for `dgemma pull` against a fake hub on 127.0.0.1: one random chat checkpoint per session, served as
a repo that also holds files the runtime never needs (and pull must never fetch)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.checkpoints import write_chat_checkpoint
from tests.support.hub import FakeHub, Repo
from tests.support.pull import NEVER, PROXIES, REPO


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return write_chat_checkpoint(tmp_path_factory.mktemp("chat-model"))


@pytest.fixture
def hub(checkpoint) -> Iterator[FakeHub]:
    with FakeHub() as fake:
        fake.add_repo(REPO, checkpoint, extra=NEVER)
        yield fake


@pytest.fixture
def repo(hub) -> Repo:
    return hub.repos[REPO]


@pytest.fixture
def hf_cache() -> Path:
    """The HF cache `isolated_home` gave this test."""
    return Path(os.environ["HF_HOME"]) / "hub"


@pytest.fixture
def env(hub) -> dict[str, str]:
    """A `dgemma` process online against the fake hub only, with this test's store and HF cache, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in (*PROXIES, "HF_HUB_OFFLINE", "HF_TOKEN")}
    return env | {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
