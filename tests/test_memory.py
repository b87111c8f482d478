"""The memory check before loading: the weights' size from the headers alone (`inspect`), a clear refusal when they
would not fit, and the CPU's automatic fallback from float32 to bfloat16 for a model too large for float32."""

from __future__ import annotations

import importlib.util

import dgemma_runtime
import pytest
import torch
from dgemma_kernels import QuantizedWeight
from dgemma_runtime import InsufficientMemoryError, inspect, memory

from tests.support.checkpoints import TinySpec, write_checkpoint
from tests.support.quant_checkpoints import write_quantized

# (dtype, quant): every way a full-precision checkpoint can be held; bitsandbytes formats where it is installed.
FORMS = [(torch.float32, None), (torch.bfloat16, None), (torch.bfloat16, "fp8"), (torch.bfloat16, "nvfp4")]
if importlib.util.find_spec("bitsandbytes"):
    FORMS += [(torch.bfloat16, "int8"), (torch.bfloat16, "nf4")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_checkpoint(TinySpec(), tmp_path_factory.mktemp("ckpt"))


def measured(model: torch.nn.Module) -> dict[str, int]:
    """Bytes the loaded modules hold, by format: what the header-based estimate must match."""
    by_format: dict[str, int] = {}
    quantized = [m for m in model.modules() if isinstance(m, QuantizedWeight)]
    for weight in quantized:
        by_format[weight.format_name] = by_format.get(weight.format_name, 0) + weight.nbytes
    inside = {id(b) for weight in quantized for b in weight.buffers()}
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in inside:
            key = str(tensor.dtype).removeprefix("torch.")
            by_format[key] = by_format.get(key, 0) + tensor.numel() * tensor.element_size()
    return by_format


@pytest.mark.parametrize(("dtype", "quant"), FORMS)
def test_the_estimate_is_what_loading_takes_in_every_format(folder, dtype, quant):
    estimate = inspect(folder).loaded(dtype, quant, quant_dense=True)
    engine = dgemma_runtime.load(folder, device="cpu", dtype=dtype, quant=quant, quant_dense=True)
    loaded = measured(engine.model)
    total = sum(loaded.values())  # beside the weights: the model's small float32 RoPE buffers
    for name in estimate.keys() | loaded.keys():
        assert abs(estimate.get(name, 0) - loaded.get(name, 0)) <= 0.02 * total, name
    assert engine.weights.by_format == estimate  # what --verbose and bench report


def with_free_memory(monkeypatch, nbytes: int) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device: nbytes)


def test_a_model_that_does_not_fit_is_refused_in_one_line_with_what_to_try(folder, monkeypatch):
    needed = sum(inspect(folder).loaded(torch.float32).values())
    with_free_memory(monkeypatch, needed // 3)
    with pytest.raises(InsufficientMemoryError) as caught:
        dgemma_runtime.load(folder, device="cpu", dtype="float32")
    message = str(caught.value)
    assert "\n" not in message and "float32" in message and "--dtype bfloat16" in message


def test_auto_on_a_cpu_too_small_for_float32_loads_bfloat16(folder, monkeypatch):
    float32 = sum(inspect(folder).loaded(torch.float32).values())
    with_free_memory(monkeypatch, int(float32 * 0.7))  # room for bfloat16 (half), not for float32
    assert dgemma_runtime.load(folder, device="cpu").dtype == torch.bfloat16
    with_free_memory(monkeypatch, float32 * 4)
    assert dgemma_runtime.load(folder, device="cpu").dtype == torch.float32
    with_free_memory(monkeypatch, int(float32 * 0.7))  # an explicit dtype is never changed: refused instead
    with pytest.raises(InsufficientMemoryError):
        dgemma_runtime.load(folder, device="cpu", dtype="float32")


def test_inspect_reads_a_quantized_checkpoint_as_stored(folder, tmp_path):
    nvfp4 = inspect(write_quantized(folder, tmp_path / "nvfp4", "ct-nvfp4"))
    plain = inspect(folder)
    assert nvfp4.parameters == plain.parameters  # the model's parameters, whatever their storage
    assert nvfp4.quantization() == "nvfp4 (compressed-tensors nvfp4-pack-quantized)"
    assert plain.quantization() == "none (float32)" and plain.quantization("fp8") == "fp8 (quantized while loading)"
    stored = nvfp4.stored
    assert set(stored) == {"nvfp4", "float32"}
    assert sum(stored.values()) < sum(plain.stored.values()) / 2  # half a byte a weight against four
    assert nvfp4.loaded(torch.bfloat16)["nvfp4"] == stored["nvfp4"]  # pre-quantized weights load as stored


def test_the_memory_needed_counts_the_cache_and_says_whether_it_fits(folder, monkeypatch):
    info = inspect(folder)
    weights = sum(info.loaded(torch.bfloat16).values())
    short, long = info.memory_needed(torch.bfloat16, context=64), info.memory_needed(torch.bfloat16, context=512)
    assert weights < short < long
    monkeypatch.setattr("dgemma_runtime.checkpoint.available_bytes", lambda device: long)
    assert info.fit(torch.device("cpu"), torch.bfloat16, context=512).fits
    assert not info.fit(torch.device("cpu"), torch.bfloat16, context=1024).fits
    most = info.config.max_position_embeddings  # a longer context is capped at the model's own
    assert info.memory_needed(torch.bfloat16, context=100_000) == info.memory_needed(torch.bfloat16, context=most)
