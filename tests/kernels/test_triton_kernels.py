"""The Triton grouped matmul, run by the Triton interpreter on the CPU, against the dequantize-then-matmul reference.

The kernel and the reference read the same quantized bytes, so they differ only by accumulation order and the
output's bf16 rounding: every row must match within 1e-2 relative error.
"""

from __future__ import annotations

import pytest  # tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from dgemma_kernels import e2m1_table, grouped_matmul_reference, quantize_fp8, quantize_nvfp4  # noqa: E402
from dgemma_kernels.backend import scaled_mm_supported  # noqa: E402
from dgemma_kernels.scaled_mm import fp8_linear_scaled_mm, quantize_per_token  # noqa: E402
from dgemma_kernels.triton_moe import (  # noqa: E402
    TileConfig,
    e2m1_bits_to_f16,
    e4m3_to_f16,
    grouped_matmul_triton,
    pick_config,
    weight_operands,
)

BOUND = 1e-2
# Uneven experts, two of them empty, 27 rows: not a multiple of any BLOCK_M.
COUNTS = [7, 0, 19, 1, 0]


@pytest.fixture(autouse=True)
def nan_empty(monkeypatch):
    """New float tensors start as NaN, so a row or column the kernel fails to write cannot pass by chance."""
    empty = torch.empty

    def poisoned(*args, **kwargs):
        out = empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", poisoned)


def make_weight(fmt: str, E: int | None, N: int, K: int, generator: torch.Generator):
    shape = (N, K) if E is None else (E, N, K)
    w = torch.randn(shape, generator=generator) / K**0.5
    if fmt == "bf16":
        return w.bfloat16()
    if fmt == "fp8-channel":
        return quantize_fp8(w)
    if fmt == "fp8-block":
        return quantize_fp8(w, group=128)
    return quantize_nvfp4(w)


def check_rows(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> None:
    """No NaN left from the poisoned output buffer, and every row close to the reference."""
    assert out.dtype == dtype and out.shape == ref.shape
    assert not out.isnan().any()
    row_err = (out.double() - ref.double()).norm(dim=1) / ref.double().norm(dim=1)
    assert row_err.max() <= BOUND, f"worst row {row_err.argmax()}: {row_err.max():.2e}"
    assert (out.double() - ref.double()).norm() / ref.double().norm() <= BOUND


def reference(x: torch.Tensor, weight, offsets: torch.Tensor) -> torch.Tensor:
    """fp32 dequantize-then-matmul of the same bytes."""
    w = weight.float() if isinstance(weight, torch.Tensor) else weight.dequantize(torch.float32)
    return grouped_matmul_reference(x.float(), w if w.dim() == 3 else w[None], offsets)


@pytest.mark.parametrize(
    ("fmt", "K"),
    [("bf16", 200), ("fp8-channel", 100), ("fp8-block", 192), ("nvfp4", 80)],  # K tails; K=192 spans two groups
)
def test_grouped_matmul_matches_reference(fmt: str, K: int) -> None:
    g = torch.Generator().manual_seed(0)
    N = 72  # two 64-wide N-tiles, the second partial
    weight = make_weight(fmt, len(COUNTS), N, K, g)
    offsets = torch.tensor(COUNTS).cumsum(0).int()
    x = torch.randn(int(offsets[-1]), K, generator=g).bfloat16()
    config = pick_config(x.shape[0], weight_operands(weight))
    assert N % config.block_n and (K % config.block_k or fmt == "fp8-block")  # partial N- and K-tiles
    check_rows(grouped_matmul_triton(x, weight, offsets), reference(x, weight, offsets))


@pytest.mark.parametrize("fmt", ["bf16", "fp8-channel", "fp8-block", "nvfp4"])
def test_two_dimensional_weight_is_one_expert(fmt: str) -> None:
    g = torch.Generator().manual_seed(1)
    weight = make_weight(fmt, None, 40, 256, g)
    x = torch.randn(20, 256, generator=g).bfloat16()
    offsets = torch.tensor([20], dtype=torch.int32)
    check_rows(grouped_matmul_triton(x, weight, offsets), reference(x, weight, offsets))


@pytest.mark.parametrize("config", [TileConfig(32, 32, 32), TileConfig(64, 128, 128)])
def test_other_tile_configs(config: TileConfig) -> None:
    """The GPU check times alternatives to the table; they must compute the same thing."""
    g = torch.Generator().manual_seed(2)
    counts = [0, 40, 0, 3]  # the first expert empty, one spanning two 32-row tiles
    weight = make_weight("nvfp4", len(counts), 72, 128, g)
    offsets = torch.tensor(counts).cumsum(0).int()
    x = torch.randn(int(offsets[-1]), 128, generator=g).bfloat16()
    check_rows(grouped_matmul_triton(x, weight, offsets, config), reference(x, weight, offsets))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_other_activation_dtypes(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(4)
    weight = make_weight("fp8-block", len(COUNTS), 24, 256, g)
    offsets = torch.tensor(COUNTS).cumsum(0).int()
    x = torch.randn(int(offsets[-1]), 256, generator=g).to(dtype)
    check_rows(grouped_matmul_triton(x, weight, offsets), reference(x, weight, offsets), dtype)


@pytest.mark.parametrize("fmt", ["fp8-channel", "fp8-block"])
def test_fp8_hardware_decode_equals_bit_decode(fmt: str) -> None:
    """GPUs with FP8 load e4m3 pointers and let the hardware convert; the interpreter emulates that conversion.
    Both decodes are exact, so the products must agree bit for bit (subnormal and zero weights included)."""
    g = torch.Generator().manual_seed(5)
    weight = make_weight(fmt, len(COUNTS), 72, 256, g)
    offsets = torch.tensor(COUNTS).cumsum(0).int()
    x = torch.randn(int(offsets[-1]), 256, generator=g).bfloat16()
    codes = weight.q.view(torch.uint8)  # the first 16 columns: ±0 and the seven subnormals of each sign
    codes[..., :16] = torch.cat([torch.arange(8), torch.arange(8) | 0x80]).to(torch.uint8)
    native = grouped_matmul_triton(x, weight, offsets, fp8_mode="cvt")
    assert torch.equal(native, grouped_matmul_triton(x, weight, offsets, fp8_mode="bits"))
    check_rows(native, reference(x, weight, offsets))


@pytest.mark.parametrize(("fmt", "K"), [("fp8-channel", 200), ("fp8-block", 320)])  # 320: a partial last group
def test_fp8_w8a8_matches_the_quantized_activations(fmt: str, K: int) -> None:
    """FP8 × FP8: the activations quantized per token (per token and K-group for block-scaled weights), as
    FP8-dynamic checkpoints expect. Against fp32 products of the same quantized operands."""
    g = torch.Generator().manual_seed(6)
    weight = make_weight(fmt, len(COUNTS), 72, K, g)
    offsets = torch.tensor(COUNTS).cumsum(0).int()
    x = torch.randn(int(offsets[-1]), K, generator=g).bfloat16()
    xq, scale = quantize_per_token(x, weight.group if weight.group < K else 0)
    group = K if weight.group >= K else weight.group
    x_used = xq.float() * scale.repeat_interleave(group, dim=1)[:, :K]
    out = grouped_matmul_triton(x, weight, offsets, fp8_mode="w8a8")
    # Quantizing x moves the product by ~3e-2, past the bound: this holds only for the quantized activations.
    check_rows(out, reference(x_used, weight, offsets))


def routed(tokens: int, top_k: int, num_experts: int, g: torch.Generator):
    """A router's output, sorted: (token, k) pair order by expert, the experts' cumulative row ends, weights."""
    experts = torch.rand(tokens, num_experts, generator=g).topk(top_k).indices
    order = torch.argsort(experts.reshape(-1), stable=True)
    offsets = torch.bincount(experts.reshape(-1), minlength=num_experts).cumsum(0).int()
    return order, offsets, torch.rand(tokens * top_k, generator=g)


@pytest.mark.parametrize("fmt", ["bf16", "fp8-block", "nvfp4"])
def test_gather_reads_token_rows_through_the_sort(fmt: str) -> None:
    g = torch.Generator().manual_seed(9)
    tokens, top_k, E = 13, 3, 5
    order, offsets, _ = routed(tokens, top_k, E, g)
    weight = make_weight(fmt, E, 40, 256, g)
    x = torch.randn(tokens, 256, generator=g).bfloat16()
    out = grouped_matmul_triton(x, weight, offsets, gather=(order, top_k))
    assert torch.equal(out, grouped_matmul_triton(x[order // top_k], weight, offsets))


@pytest.mark.parametrize("fmt", ["bf16", "fp8-channel"])
def test_scatter_writes_weighted_rows_in_pair_order(fmt: str) -> None:
    g = torch.Generator().manual_seed(10)
    tokens, top_k, E = 13, 3, 5
    order, offsets, pair_weights = routed(tokens, top_k, E, g)
    weight = make_weight(fmt, E, 40, 96, g)
    h = torch.randn(tokens * top_k, 96, generator=g).bfloat16()  # rows already sorted by expert
    out = grouped_matmul_triton(h, weight, offsets, scatter=(order, pair_weights))
    check_rows(out[order], reference(h, weight, offsets) * pair_weights[order, None])


def test_w8a8_gathers_the_scales_with_the_rows() -> None:
    g = torch.Generator().manual_seed(11)
    tokens, top_k, E, K = 11, 2, 4, 320
    order, offsets, _ = routed(tokens, top_k, E, g)
    weight = make_weight("fp8-block", E, 24, K, g)
    x = torch.randn(tokens, K, generator=g).bfloat16() * torch.logspace(-2, 2, tokens)[:, None].bfloat16()
    out = grouped_matmul_triton(x, weight, offsets, fp8_mode="w8a8", gather=(order, top_k))
    assert torch.equal(out, grouped_matmul_triton(x[order // top_k], weight, offsets, fp8_mode="w8a8"))


def test_fp8_block_rejects_a_block_k_across_groups() -> None:
    weight = quantize_fp8(torch.randn(2, 16, 128), group=32)
    offsets = torch.tensor([3, 5], dtype=torch.int32)
    with pytest.raises(ValueError, match="BLOCK_K"):
        grouped_matmul_triton(torch.randn(5, 128).bfloat16(), weight, offsets, TileConfig(16, 16, 64))


def test_tiles_cover_every_row_of_many_uneven_experts() -> None:
    """The kernel maps its M-tiles to experts from the offsets alone: 130 experts (not a power of two), a third of
    them empty, some spanning several 16-row tiles. Every row must be written (the output starts as NaN)."""
    g = torch.Generator().manual_seed(8)
    counts = torch.randint(0, 40, (130,), generator=g) * (torch.rand(130, generator=g) > 0.33)
    counts[0] = counts[-1] = 0
    offsets = counts.cumsum(0).int()
    weight = make_weight("bf16", 130, 24, 32, g)
    x = torch.randn(int(offsets[-1]), 32, generator=g).bfloat16()
    check_rows(grouped_matmul_triton(x, weight, offsets, TileConfig(16, 32, 32)), reference(x, weight, offsets))


def test_block_sizes_follow_rows_per_expert() -> None:
    moe_decode = weight_operands(torch.empty(128, 1408, 2816, dtype=torch.bfloat16, device="meta"))
    assert pick_config(2048, moe_decode).block_m == 32
    assert pick_config(16384, moe_decode).block_m == 64
    down = weight_operands(torch.empty(128, 2816, 704, dtype=torch.bfloat16, device="meta"))
    assert pick_config(2048, down).block_k == 64
    fp8_block = weight_operands(quantize_fp8(torch.randn(1, 16, 256), group=32))
    assert pick_config(256, fp8_block).block_k == 32
    wgmma = pick_config(2048, moe_decode, wgmma=True)  # Hopper's FP8 tensor-core instruction takes 64 rows
    assert (wgmma.block_m, wgmma.num_warps) == (64, 4)
    nvfp4 = weight_operands(quantize_nvfp4(torch.randn(2, 64, 256)))
    nvfp4_config = pick_config(2048, nvfp4, wgmma=True)  # the fewest instructions per decoded weight
    assert (nvfp4_config.block_m, nvfp4_config.block_k, nvfp4_config.num_warps) == (64, 64, 4)


@triton.jit
def _decode_kernel(in_ptr, out_ptr, FP4: tl.constexpr):
    i = tl.arange(0, 256)
    byte = tl.load(in_ptr + i)
    values = e2m1_bits_to_f16(byte & 0xF) * 16384.0 if FP4 else e4m3_to_f16(byte)
    tl.static_assert(values.dtype == tl.float16)  # the rescale must not promote to fp32
    tl.store(out_ptr + i, values)


def test_bit_decoders_are_exact() -> None:
    """All 256 e4m3 bytes (bar the two NaNs) and all 16 E2M1 codes, subnormals and -0 included."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    out = torch.empty(256, dtype=torch.float16)
    _decode_kernel[(1,)](codes, out, FP4=False)
    expected = codes.view(torch.float8_e4m3fn).float()
    finite = ~expected.isnan()
    assert torch.equal(out.float()[finite], expected[finite])
    assert torch.equal(out.float()[finite].signbit(), expected[finite].signbit())
    _decode_kernel[(1,)](codes, out, FP4=True)
    expected = e2m1_table()[codes.long() & 0xF]
    assert torch.equal(out.float(), expected) and torch.equal(out.float().signbit(), expected.signbit())


def test_fp8_scaled_mm_matches_float64() -> None:
    g = torch.Generator().manual_seed(3)
    weight = quantize_fp8(torch.randn(48, 64, generator=g))
    x = torch.randn(2, 5, 64, generator=g).bfloat16()
    out = fp8_linear_scaled_mm(x, weight)
    xq, scale = quantize_per_token(x.reshape(-1, 64))
    ref = (xq.double() * scale.double()) @ (weight.q.double() * weight.scale.double()).T
    assert out.shape == (2, 5, 48) and out.dtype == torch.bfloat16
    assert (out.reshape(-1, 48).double() - ref).norm() / ref.norm() <= BOUND


def test_fp8_scaled_mm_takes_only_per_channel_2d() -> None:
    with pytest.raises(ValueError):
        fp8_linear_scaled_mm(torch.randn(2, 256), quantize_fp8(torch.randn(16, 256), group=128))
    with pytest.raises(ValueError):
        fp8_linear_scaled_mm(torch.randn(2, 64), quantize_fp8(torch.randn(2, 16, 64)))


def test_scaled_mm_unsupported_on_cpu() -> None:
    assert not scaled_mm_supported("cpu")
