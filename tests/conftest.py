"""Shared fixtures. Threads are pinned before torch loads: 2 cores, and oversubscription makes runs crawl."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# No GPU in the test runs: Triton kernels execute in its interpreter. Read when a kernel is decorated, so it
# must be set before anything imports dgemma_kernels.triton_moe.
os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

torch.set_num_threads(1)

from tests.support.checkpoints import TinySpec  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own model store and Hugging Face cache."""
    monkeypatch.setenv("DGEMMA_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny_spec() -> TinySpec:
    return TinySpec()
