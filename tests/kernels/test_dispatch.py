"""Which implementation each kernel entry point runs. There is no GPU here: the GPU branches are steered on the CPU
through `backend.on_gpu`, the one place that decides, and the Triton kernels are stubbed or interpreted."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from dgemma_kernels import backend, fused, linear, moe, quantize_fp8, quantize_nvfp4, scaled_mm

pytest.importorskip("triton")  # tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton

from dgemma_kernels import triton_fused, triton_moe

EPS = 1e-6


@pytest.fixture
def pretend_cuda(monkeypatch):
    """Every tensor counts as a CUDA one, with Triton installed: the real `on_gpu` decides, so the switch does."""
    real = backend.on_gpu
    monkeypatch.setattr(backend, "triton_available", lambda: True)
    monkeypatch.setattr(backend, "on_gpu", lambda device: real(torch.device("cuda", 0)))


def test_on_gpu_means_cuda_with_triton_and_the_switch_on(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(backend, "enabled", True)
    monkeypatch.setattr(backend, "triton_available", lambda: True)
    assert backend.on_gpu(cuda) and not backend.on_gpu(torch.device("cpu"))
    monkeypatch.setattr(backend, "enabled", False)
    assert not backend.on_gpu(cuda)
    monkeypatch.setattr(backend, "enabled", True)
    monkeypatch.setattr(backend, "triton_available", lambda: False)
    assert not backend.on_gpu(cuda)


@pytest.mark.parametrize(("value", "enabled"), [("0", False), ("1", True)])
def test_the_environment_sets_the_switch(value, enabled):
    code = "from dgemma_kernels import backend; print(backend.enabled)"
    env = {**os.environ, "DGEMMA_FUSED_KERNELS": value}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(enabled)


def entry_points() -> dict[str, tuple[Callable[[], object], str | None]]:
    """Every GPU kernel entry point on small inputs, with the kernel ("module.function") a GPU runs for them; None
    where those inputs keep the PyTorch path on a GPU too."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, generator=g).bfloat16()
    w = torch.ones(64, dtype=torch.bfloat16)
    heads = torch.randn(1, 3, 2, 64, generator=g).bfloat16()
    cos, sin = torch.randn(2, 3, 64, generator=g)
    tokens, routing = torch.randn(5, 64, generator=g).bfloat16(), torch.rand(5, 4, generator=g)
    weights, experts = routing.topk(2)
    gate_up, down = torch.randn(4, 32, 64, generator=g), torch.randn(4, 64, 16, generator=g)
    offsets = torch.tensor([2, 2, 4, 5], dtype=torch.int32)
    dense = torch.randn(48, 64, generator=g)
    return {
        "rms_norm": (lambda: fused.rms_norm(x, w, EPS), "triton_fused.rms_norm_triton"),
        "add_rms_norm": (lambda: fused.add_rms_norm(x, x, w, EPS), "triton_fused.add_rms_norm_triton"),
        "router_input": (lambda: fused.router_input(x, w, 0.125, EPS), "triton_fused.router_input_triton"),
        "rms_norm_rope": (lambda: fused.rms_norm_rope(heads, w, cos, sin, EPS), "triton_fused.rms_norm_rope_triton"),
        "combine_feed_forward": (
            lambda: fused.combine_feed_forward(x, x, x, (w, w, w), w[:1], EPS),
            "triton_fused.combine_feed_forward_triton",
        ),
        "route": (lambda: fused.route(routing, 2, torch.ones(4)), "triton_fused.route_triton"),
        "softcap_logits": (lambda: fused.softcap_logits(x, 30.0), "triton_fused.softcap_logits_triton"),
        "softcap_logits uncapped": (lambda: fused.softcap_logits(x, None), None),
        "gelu_mul": (lambda: fused.gelu_mul(x, x), "triton_fused.gelu_mul_triton"),
        "quantize_per_token": (lambda: scaled_mm.quantize_per_token(x[0]), "triton_fused.quantize_fp8_triton"),
        "quantize_per_token per 32": (
            lambda: scaled_mm.quantize_per_token(x[0], 32),
            "triton_fused.quantize_fp8_triton",
        ),
        "quantize_per_token per 48": (lambda: scaled_mm.quantize_per_token(x[0], 48), None),
        "grouped_matmul nvfp4": (
            lambda: moe.grouped_matmul(tokens, quantize_nvfp4(gate_up), offsets),
            "triton_moe.grouped_matmul_triton",
        ),
        "grouped_matmul bf16": (lambda: moe.grouped_matmul(tokens, gate_up.bfloat16(), offsets), None),
        "experts_forward bf16": (
            lambda: moe.experts_forward(tokens, weights, experts, gate_up.bfloat16(), down.bfloat16()),
            "triton_moe.experts_forward_triton",
        ),
        "experts_forward fp8": (
            lambda: moe.experts_forward(tokens, weights, experts, quantize_fp8(gate_up), quantize_fp8(down)),
            "triton_moe.experts_forward_triton",
        ),
        "linear fp8": (lambda: linear(x, quantize_fp8(dense)), "triton_moe.linear_triton"),
        "linear nvfp4": (lambda: linear(x, quantize_nvfp4(dense)), "triton_moe.linear_triton"),
        "linear bf16": (lambda: linear(x, dense.bfloat16()), None),
    }


@pytest.mark.parametrize("switch", [True, False], ids=["switch on", "DGEMMA_FUSED_KERNELS=0"])
@pytest.mark.parametrize("name", list(entry_points()))
def test_every_entry_point_runs_its_kernel_on_a_gpu_only_with_the_switch_on(name, switch, pretend_cuda, monkeypatch):
    """Every `*_triton` function is stubbed: with the switch on, a GPU call goes to its kernel alone; with it off
    (or for inputs the kernel does not take), the PyTorch path runs and reaches no kernel at any depth."""
    calls, kernel_output = [], object()
    for module in (triton_fused, triton_moe):
        for attr in [a for a in vars(module) if a.endswith("_triton")]:
            path = f"{module.__name__.rsplit('.', 1)[1]}.{attr}"
            monkeypatch.setattr(module, attr, lambda *args, path=path, **kwargs: calls.append(path) or kernel_output)
    monkeypatch.setattr(backend, "enabled", switch)
    call, kernel = entry_points()[name]
    out = call()
    expected = [kernel] if switch and kernel else []
    assert calls == expected
    assert (out is kernel_output) == bool(expected)


@pytest.mark.parametrize("switch", [True, False])
def test_the_sampler_fuses_its_step_only_with_the_switch_on(switch, pretend_cuda, monkeypatch):
    from dgemma_runtime.sampler import FusedStep

    monkeypatch.setattr(backend, "enabled", switch)
    assert FusedStep.available(torch.device("cpu")) is switch


def test_per_channel_fp8_goes_to_scaled_mm_where_supported(pretend_cuda, monkeypatch):
    calls = []
    real = triton_moe.fp8_linear_scaled_mm

    def spy(x, weight):
        calls.append(weight.shape)
        return real(x, weight)

    monkeypatch.setattr(triton_moe, "scaled_mm_supported", lambda device: True)
    monkeypatch.setattr(triton_moe, "fp8_linear_scaled_mm", spy)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 5, 64, generator=g), torch.randn(48, 64, generator=g)
    weight = quantize_fp8(w)
    expected = F.linear(x, weight.dequantize(torch.float32))
    out = linear(x, weight)
    assert calls == [torch.Size([48, 64])] and out.shape == (3, 5, 48)
    # Activations are quantized to FP8 too (W8A8): a few percent off the W8A16 result, not more.
    assert 0 < ((out - expected).norm() / expected.norm()).item() < 0.05
    # DGEMMA_FUSED_KERNELS=0: the PyTorch W8A16 product, exactly.
    monkeypatch.setattr(backend, "enabled", False)
    assert torch.equal(linear(x, weight), expected) and len(calls) == 1


def test_block_scaled_fp8_never_goes_to_scaled_mm(pretend_cuda, monkeypatch):
    monkeypatch.setattr(triton_moe, "scaled_mm_supported", lambda device: True)
    monkeypatch.setattr(triton_moe, "fp8_linear_scaled_mm", lambda x, weight: (_ for _ in ()).throw(AssertionError))
    x, w = torch.randn(4, 256), torch.randn(32, 256)
    weight = quantize_fp8(w, group=128)
    expected = F.linear(x, weight.dequantize(torch.float32))
    # The grouped kernel, W8A8 with a scale per token and 128 columns.
    assert ((linear(x, weight) - expected).norm() / expected.norm()).item() < 0.05


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
    order; the interpreter stands in), against its reference sequence of operations: bf16 and NVFP4 experts."""
    g = torch.Generator().manual_seed(3)
    T, top_k, E, H, inner = 9, 2, 4, 64, 32
    x = torch.randn(T, H, generator=g).bfloat16()
    experts = torch.rand(T, E, generator=g).topk(top_k).indices
    weights = torch.rand(T, top_k, generator=g)
    for make in (lambda w: w.bfloat16(), quantize_nvfp4):
        gate_up = make(torch.randn(E, 2 * inner, H, generator=g) / 8)
        down = make(torch.randn(E, H, inner, generator=g) / 6)
        expected = moe.experts_forward(x, weights, experts, gate_up, down)  # CPU tensors: the reference path
        monkeypatch.setattr(backend, "on_gpu", lambda device: True)
        out = moe.experts_forward(x, weights, experts, gate_up, down)
        monkeypatch.undo()
        assert out.dtype == x.dtype and out.shape == (T, H)
        # The fused path rounds once (weighted in fp32, summed over k in fp32); the reference rounds thrice.
        assert ((out.float() - expected.float()).norm() / expected.float().norm()).item() < 1e-2


def test_reports_say_which_kernels_run_and_how_fp8_is_multiplied(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(backend, "enabled", True)
    assert backend.describe(cpu, ["float32"]) == "PyTorch (CPU)"
    assert backend.describe(cpu, ["fp8", "bfloat16"]) == "PyTorch (CPU); FP8 weights widened (W8A16)"
    monkeypatch.setattr(backend, "triton_available", lambda: True)
    monkeypatch.setattr(backend, "_capability", lambda index: (9, 0))
    assert backend.describe(gpu, ["fp8"]) == "Triton (sm90); FP8 × FP8, activations quantized per token"
    monkeypatch.setattr(backend, "enabled", False)
    assert backend.describe(gpu, ["nvfp4"]) == "Triton (sm90), fused kernels off"
    assert backend.describe(gpu, ["fp8"]) == "Triton (sm90), fused kernels off; FP8 weights widened (W8A16)"
    monkeypatch.setattr(backend, "enabled", True)
    monkeypatch.setattr(backend, "_capability", lambda index: (8, 0))
    assert backend.describe(gpu, ["fp8"]).endswith("FP8 weights widened (W8A16)")
    monkeypatch.setattr(backend, "triton_available", lambda: False)
    assert backend.describe(gpu, ["bfloat16"]) == "PyTorch (no Triton installed)"
