"""bitsandbytes int8 and NF4 weights (`--quant int8|nf4`): round-trip error, expert stacks, sizes, the dispatcher."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from dgemma_kernels import grouped_matmul, linear
from dgemma_kernels.bnb import BNB_MISSING, Int8Weight, Nf4Weight, quantize_int8, quantize_nf4

bitsandbytes = pytest.importorskip("bitsandbytes")  # dgemma_kernels.bnb itself imports it only when used

QUANTIZERS = {"int8": quantize_int8, "nf4": quantize_nf4}


def gaussian(*shape: int, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return ((approx.double() - exact.double()).norm() / exact.double().norm()).item()


# Relative Frobenius error of quantize → dequantize on Gaussian weights, each expert at its own magnitude.
# Measured here (bitsandbytes 0.50.2, torch 2.13 CPU, K = 1024): int8 0.78 % (0.85 % at K = 2816: the row absmax
# grows with K), NF4 9.2 % (the notes' §5.7 Linear4bit forward: 9.3 %). Upper bounds sit a little above; lower
# bounds catch a lossless fake.
@pytest.mark.parametrize(("fmt", "low", "high"), [("int8", 0.005, 0.009), ("nf4", 0.08, 0.095)])
def test_round_trip_error_per_expert(fmt, low, high):
    w = gaussian(3, 512, 1024, seed=1) * torch.tensor([1e-3, 1.0, 30.0]).view(3, 1, 1)
    weight = QUANTIZERS[fmt](w)
    assert weight.shape == w.shape
    deq = weight.dequantize(torch.float32)
    for e in range(3):
        assert low < relative_error(deq[e], w[e]) < high


@pytest.mark.parametrize("fmt", list(QUANTIZERS))
def test_experts_are_quantized_independently(fmt):
    """A stack of experts dequantizes to exactly what each expert quantized alone does."""
    w = gaussian(3, 24, 40, seed=2) * torch.tensor([1e-2, 1.0, 1e2]).view(3, 1, 1)  # 24·40: not whole NF4 blocks
    stacked = QUANTIZERS[fmt](w).dequantize(torch.float32)
    for e in range(3):
        assert torch.equal(stacked[e], QUANTIZERS[fmt](w[e]).dequantize(torch.float32))


@pytest.mark.parametrize("fmt", list(QUANTIZERS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_dequantize_dtype_and_zeros(fmt, dtype):
    w = gaussian(2, 16, 64, seed=3)
    w[1, 5] = 0  # an all-zero row (int8) and whole zero blocks (NF4): absmax 0 must give zeros, not NaN
    deq = QUANTIZERS[fmt](w).dequantize(dtype)
    assert deq.dtype == dtype and deq.shape == w.shape
    assert not deq.isnan().any() and deq[1, 5].eq(0).all()


@pytest.mark.parametrize(
    ("fmt", "per_matrix", "vs_bf16"),
    [
        ("int8", lambda N, K: N * K + 4 * N, 2 * 320 / (320 + 4)),  # one byte a weight plus a float per row
        ("nf4", lambda N, K: math.ceil(N * K / 64) * (32 + 4), 2 / (0.5 + 4 / 64)),  # a nibble plus a float per 64
    ],
)
def test_nbytes_is_what_the_layout_implies(fmt, per_matrix, vs_bf16):
    E, N, K = 2, 48, 320
    weight = QUANTIZERS[fmt](gaussian(E, N, K, seed=4))
    assert weight.nbytes == E * per_matrix(N, K)
    assert E * N * K * 2 / weight.nbytes == pytest.approx(vs_bf16)


def test_nf4_layout_high_nibble_first():
    code = bitsandbytes.functional.get_4bit_type("nf4", device="cpu")
    w = torch.zeros(2, 64)
    w[1, 0], w[1, 1] = 1.0, -1.0  # the block's absmax: codes of exactly +1 and -1
    packed = quantize_nf4(w).packed
    plus, minus, zero = (int(torch.argmin((code - v).abs())) for v in (1.0, -1.0, 0.0))
    assert packed.shape == (64,) and packed[32].item() == plus << 4 | minus  # matrix rows run on, flattened
    assert packed[:32].eq(zero << 4 | zero).all() and packed[33:].eq(zero << 4 | zero).all()


@pytest.mark.parametrize("fmt", list(QUANTIZERS))
def test_buffers_follow_the_module(fmt):
    weight = QUANTIZERS[fmt](gaussian(2, 16, 64, seed=5))
    names = {"int8": {"q", "absmax"}, "nf4": {"packed", "absmax"}}[fmt]
    assert {name for name, _ in weight.named_buffers()} == names
    assert isinstance(weight, {"int8": Int8Weight, "nf4": Nf4Weight}[fmt])


@pytest.mark.parametrize("fmt", list(QUANTIZERS))
def test_grouped_matmul_and_linear(fmt):
    weight = QUANTIZERS[fmt](gaussian(4, 48, 160, seed=6))
    counts = [5, 0, 7, 0]  # the middle and the last expert get no rows
    offsets = torch.tensor(counts, dtype=torch.int32).cumsum(0).int()
    x = gaussian(sum(counts), 160, seed=7)
    out = grouped_matmul(x, weight, offsets)
    deq = weight.dequantize(torch.bfloat16)
    assert torch.equal(out, F.grouped_mm(x, deq.transpose(1, 2), offs=offsets))
    expected = torch.cat([rows @ w.T for rows, w in zip(x.float().split(counts), deq.float(), strict=True)])
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item())

    dense = QUANTIZERS[fmt](gaussian(48, 160, seed=8))
    x = gaussian(2, 3, 160, seed=9)
    assert torch.equal(linear(x, dense), F.linear(x, dense.dequantize(torch.bfloat16)))


@pytest.mark.parametrize("fmt", list(QUANTIZERS))
def test_missing_bitsandbytes_is_a_one_line_error(fmt, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)  # makes the import raise ImportError
    with pytest.raises(ImportError) as raised:
        QUANTIZERS[fmt](gaussian(16, 64))
    assert str(raised.value) == BNB_MISSING


def test_no_import_noise():
    """bitsandbytes' CPU backend logs a warning about the optional hub `kernels` package at import: kept quiet."""
    code = "import torch; from dgemma_kernels.bnb import quantize_nf4; quantize_nf4(torch.randn(64, 64)).dequantize()"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stderr == "" and result.stdout == ""
