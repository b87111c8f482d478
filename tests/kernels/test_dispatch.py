"""Which path `linear` takes for a quantized dense weight (the GPU-only branches are steered on the CPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dgemma_kernels import linear, moe, quantize_fp8


def test_per_channel_fp8_goes_to_scaled_mm_where_supported(monkeypatch):
    calls = []
    real = moe.fp8_linear_scaled_mm

    def spy(x, weight):
        calls.append(weight.shape)
        return real(x, weight)

    monkeypatch.setattr(moe, "scaled_mm_supported", lambda device: True)
    monkeypatch.setattr(moe, "fp8_linear_scaled_mm", spy)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 5, 64, generator=g), torch.randn(48, 64, generator=g)
    weight = quantize_fp8(w)
    out = linear(x, weight)
    assert calls == [torch.Size([48, 64])] and out.shape == (3, 5, 48)
    expected = F.linear(x, weight.dequantize(torch.float32))
    # Activations are quantized to FP8 too (W8A8): a few percent off the W8A16 result, not more.
    assert ((out - expected).norm() / expected.norm()).item() < 0.05


def test_block_scaled_fp8_never_goes_to_scaled_mm(monkeypatch):
    monkeypatch.setattr(moe, "scaled_mm_supported", lambda device: True)
    monkeypatch.setattr(moe, "fp8_linear_scaled_mm", lambda x, weight: (_ for _ in ()).throw(AssertionError))
    x, w = torch.randn(4, 256), torch.randn(32, 256)
    weight = quantize_fp8(w, group=128)
    torch.testing.assert_close(linear(x, weight), F.linear(x, weight.dequantize(torch.float32)))


def test_half_precision_experts_on_the_cpu_match_the_grouped_product_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    E, N, K = 6, 40, 24
    counts = torch.tensor([3, 0, 7, 1, 0, 5])  # empty experts too
    offsets = torch.cumsum(counts, 0, dtype=torch.int32)
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(int(counts.sum()), K, generator=g).to(dtype)
        w = torch.randn(E, N, K, generator=g).to(dtype)
        pairs = zip(offsets.tolist(), counts.tolist(), strict=True)
        expected = torch.cat([x[end - n : end] @ w[e].T for e, (end, n) in enumerate(pairs)])
        assert torch.equal(moe.grouped_matmul_padded(x, w, offsets), expected)
        assert torch.equal(moe._grouped_mm(x, w.transpose(1, 2), offs=offsets), expected)
        assert torch.equal(moe.grouped_matmul_reference(x, w, offsets), expected)


def test_experts_on_a_gpu_gather_and_scatter_in_the_kernel(monkeypatch):
    """`experts_forward` as a GPU runs it (the Triton kernel gathers token rows and writes weighted pairs back in
    order; the interpreter stands in), against its reference sequence of operations: bf16 and NVFP4 experts,
    and bitsandbytes-style weights the kernel cannot read keep the reference path."""
    pytest = __import__("pytest")
    pytest.importorskip("triton")
    from dgemma_kernels import experts_forward, fused, quantize_nvfp4

    g = torch.Generator().manual_seed(3)
    T, top_k, E, H, inner = 9, 2, 4, 64, 32
    x = torch.randn(T, H, generator=g).bfloat16()
    experts = torch.rand(T, E, generator=g).topk(top_k).indices
    weights = torch.rand(T, top_k, generator=g)
    for make in (lambda w: w.bfloat16(), quantize_nvfp4):
        gate_up = make(torch.randn(E, 2 * inner, H, generator=g) / 8)
        down = make(torch.randn(E, H, inner, generator=g) / 6)
        expected = experts_forward(x, weights, experts, gate_up, down)  # CPU tensors: the reference path
        monkeypatch.setattr(fused, "use_triton", lambda t: True)
        out = experts_forward(x, weights, experts, gate_up, down)
        monkeypatch.undo()
        assert out.dtype == x.dtype and out.shape == (T, H)
        # The fused path rounds once (weighted in fp32, summed over k in fp32); the reference rounds thrice.
        assert ((out.float() - expected.float()).norm() / expected.float().norm()).item() < 1e-2


def test_reports_say_which_kernels_run_and_how_fp8_is_multiplied(monkeypatch):
    from dgemma_kernels import backend, fused

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert backend.describe(cpu, ["float32"]) == "PyTorch (CPU)"
    assert backend.describe(cpu, ["fp8", "bfloat16"]) == "PyTorch (CPU); FP8 weights widened (W8A16)"
    monkeypatch.setattr(backend, "triton_available", lambda: True)
    monkeypatch.setattr(backend, "_capability", lambda index: (9, 0))
    assert backend.describe(gpu, ["fp8"]) == "Triton (sm90); FP8 × FP8, activations quantized per token"
    monkeypatch.setattr(fused, "enabled", False)
    assert backend.describe(gpu, ["nvfp4"]) == "Triton (sm90), fused kernels off"
    monkeypatch.setattr(backend, "_capability", lambda index: (8, 0))
    assert backend.describe(gpu, ["fp8"]).endswith("FP8 weights widened (W8A16)")
    monkeypatch.setattr(backend, "triton_available", lambda: False)
    assert backend.describe(gpu, ["bfloat16"]) == "PyTorch (no Triton installed)"
