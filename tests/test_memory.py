"""The memory check before loading: the weights' size from the headers alone, a clear refusal when they would
not fit, and the CPU's automatic fallback from float32 to bfloat16 for a model too large for float32."""

from __future__ import annotations

import importlib.util

import dgemma_runtime
import pytest
import torch
from dgemma_runtime import InsufficientMemoryError, load_config, memory

from tests.checkpoints import TinySpec, write_checkpoint

# (dtype, quant): every way a full-precision checkpoint can be held; bitsandbytes formats where it is installed.
FORMS = [(torch.float32, None), (torch.bfloat16, None), (torch.bfloat16, "fp8"), (torch.bfloat16, "nvfp4")]
if importlib.util.find_spec("bitsandbytes"):
    FORMS += [(torch.bfloat16, "int8"), (torch.bfloat16, "nf4")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_checkpoint(TinySpec(), tmp_path_factory.mktemp("ckpt"))


@pytest.mark.parametrize(("dtype", "quant"), FORMS)
def test_the_estimate_is_what_loading_takes(folder, dtype, quant):
    config, _ = load_config(folder)
    estimate = memory.weight_bytes(folder, config, dtype, quant, quant_dense=True)
    engine = dgemma_runtime.load(folder, device="cpu", dtype=dtype, quant=quant, quant_dense=True)
    loaded = sum(engine.weight_memory().values())
    assert abs(estimate - loaded) <= 0.02 * loaded


def with_free_memory(monkeypatch, nbytes: int) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device: nbytes)


def test_a_model_that_does_not_fit_is_refused_in_one_line_with_what_to_try(folder, monkeypatch):
    config, _ = load_config(folder)
    needed = memory.weight_bytes(folder, config, torch.float32, None, False)
    with_free_memory(monkeypatch, needed // 3)
    with pytest.raises(InsufficientMemoryError) as caught:
        dgemma_runtime.load(folder, device="cpu", dtype="float32")
    message = str(caught.value)
    assert "\n" not in message and "float32" in message and "--dtype bfloat16" in message


def test_auto_on_a_cpu_too_small_for_float32_loads_bfloat16(folder, monkeypatch):
    config, _ = load_config(folder)
    float32 = memory.weight_bytes(folder, config, torch.float32, None, False)
    with_free_memory(monkeypatch, int(float32 * 0.7))  # room for bfloat16 (half), not for float32
    assert dgemma_runtime.load(folder, device="cpu").dtype == torch.bfloat16
    with_free_memory(monkeypatch, float32 * 4)
    assert dgemma_runtime.load(folder, device="cpu").dtype == torch.float32
    with_free_memory(monkeypatch, int(float32 * 0.7))  # an explicit dtype is never changed: refused instead
    with pytest.raises(InsufficientMemoryError):
        dgemma_runtime.load(folder, device="cpu", dtype="float32")
