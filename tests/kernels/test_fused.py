"""The fused Triton kernels (norms, residuals, RoPE, gated GELU), run by the Triton interpreter on the CPU, against
their PyTorch definitions in `dgemma_kernels.fused`.

The kernels round to the activation dtype wherever the definition stores a tensor, so in bf16 they agree with it
bit for bit except where the fp32 mean square, summed in another order, lands on the other side of a rounding
boundary. Then, with the kernels switched in, a whole model's decoder logits must match the PyTorch path.
"""

from __future__ import annotations

import pytest  # tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from dgemma_kernels import backend, fused
from dgemma_kernels.triton_fused import (
    combine_feed_forward_triton,
    gelu_mul_triton,
    quantize_fp8_triton,
    rms_norm_rope_triton,
    rms_norm_triton,
    route_triton,
    router_input_triton,
    sample_step_triton,
    softcap_logits_triton,
)

EPS = 1e-6
H = 300  # not a power of two: masked lanes must not enter the mean square


def assert_matches(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Same dtype and shape; in bf16 at least 99% of elements identical and the rest one rounding step away."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if ref.dtype == torch.bfloat16:
        assert (out == ref).float().mean() >= 0.99
        torch.testing.assert_close(out, ref, rtol=2**-7, atol=1e-6)
    else:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def randn(*shape: int, dtype: torch.dtype, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=generator) * scale).to(dtype)


def norm_weight(dim: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(dim, generator=generator) + 0.5).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("with_weight", [True, False])
def test_rms_norm(dtype, with_weight):
    g = torch.Generator().manual_seed(0)
    x = randn(3, 5, H, dtype=dtype, generator=g, scale=3.0)
    weight = norm_weight(H, dtype, g) if with_weight else None
    assert_matches(rms_norm_triton(x, weight, EPS), fused.rms_norm_reference(x, weight, EPS))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_add_rms_norm(dtype):
    g = torch.Generator().manual_seed(1)
    residual, x = randn(7, H, dtype=dtype, generator=g), randn(7, H, dtype=dtype, generator=g, scale=5.0)
    weight = norm_weight(H, dtype, g)
    out = rms_norm_triton(x, weight, EPS, residual)
    assert_matches(out, residual + fused.rms_norm_reference(x, weight, EPS))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rotated_share", [1.0, 0.25])  # full-attention layers rotate only a quarter of the pairs
def test_rms_norm_rope(dtype, rotated_share):
    g = torch.Generator().manual_seed(2)
    B, S, heads, D = 2, 7, 3, 64
    x = randn(B, S, heads, D, dtype=dtype, generator=g)
    weight = norm_weight(D, dtype, g)
    angles = torch.rand(S, D // 2, generator=g) * 20
    angles[:, int(rotated_share * D // 2) :] = 0.0
    table = torch.cat((angles, angles), dim=-1)
    cos, sin = table.cos().to(dtype), table.sin().to(dtype)
    ref = fused.apply_rope(fused.rms_norm_reference(x, weight, EPS), cos, sin)
    assert_matches(rms_norm_rope_triton(x, weight, cos, sin, EPS), ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_combine_feed_forward(dtype):
    g = torch.Generator().manual_seed(3)
    h, dense, moe = (randn(2, 9, H, dtype=dtype, generator=g, scale=s) for s in (1.0, 4.0, 0.3))
    norms = tuple(norm_weight(H, dtype, g) for _ in range(3))
    scalar = torch.tensor([0.7]).to(dtype)
    dense_norm, moe_norm, out_norm = norms
    both = fused.rms_norm_reference(dense, dense_norm, EPS) + fused.rms_norm_reference(moe, moe_norm, EPS)
    ref = (h + fused.rms_norm_reference(both, out_norm, EPS)) * scalar
    assert_matches(combine_feed_forward_triton(h, dense, moe, norms, scalar, EPS), ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gelu_mul_on_strided_halves(dtype):
    """The experts' gate and up are the two halves of one output: rows strided by 2N. N spans several blocks."""
    g = torch.Generator().manual_seed(4)
    gate, up = randn(5, 2 * 1500, dtype=dtype, generator=g, scale=3.0).chunk(2, dim=-1)
    out = gelu_mul_triton(gate, up)
    ref = F.gelu(gate, approximate="tanh") * up
    assert out.dtype == dtype and out.shape == ref.shape
    # PyTorch's CPU tanh loses a few ulps in the tails; both stay within 1e-6 of the exact GELU.
    torch.testing.assert_close(out, ref, rtol=2**-7 if dtype == torch.bfloat16 else 1e-5, atol=1e-6)
    exact = gate.double() * torch.sigmoid(2 * 0.7978845608028654 * (gate.double() + 0.044715 * gate.double() ** 3))
    if dtype == torch.float32:
        assert ((out.double() - exact * up.double()).abs() <= 1e-6 * (1 + up.double().abs())).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_router_input(dtype):
    g = torch.Generator().manual_seed(12)
    h = randn(5, 7, H, dtype=dtype, generator=g, scale=3.0)
    scale = norm_weight(H, dtype, g)
    assert_matches(router_input_triton(h, scale, H**-0.5, EPS), fused.router_input(h, scale, H**-0.5, EPS))


@pytest.mark.parametrize(("num_experts", "top_k"), [(128, 8), (6, 3)])  # the 26B router; neither a power of two
def test_route(num_experts, top_k):
    g = torch.Generator().manual_seed(6)
    scores = randn(40, num_experts, dtype=torch.float32, generator=g, scale=2.0)
    per_expert_scale = norm_weight(num_experts, torch.bfloat16, g)
    weights, experts = route_triton(scores, top_k, per_expert_scale)
    ref_weights, ref_experts = fused.route(scores, top_k, per_expert_scale)  # a CPU tensor: the PyTorch path
    assert experts.dtype == ref_experts.dtype and torch.equal(experts, ref_experts)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, ref_weights, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("K", "group"), [(300, 0), (320, 128)])  # per token; per 128 columns, the last 64
def test_quantize_fp8_matches_pytorch_bit_for_bit(K, group):
    """The W8A8 activation quantizer against `quantize_per_token`'s PyTorch path: same scales, same bytes, through
    zero rows, e4m3 subnormals, values too small for e4m3, and ties at both ends of the range."""
    from dgemma_kernels.scaled_mm import quantize_per_token

    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, K, generator=g) * torch.logspace(-4, 3, 6)[:, None]
    x[0] = 0.0
    x[1] = 448 * 2.0 ** -torch.linspace(0, 24, K)  # every binade from 448 down past the smallest subnormal
    ties = torch.tensor([448.0, 1.0625, 1.1875, -1.0625, 3 * 2.0**-10, 5 * 2.0**-10, -(3 * 2.0**-10)])
    x[2, : len(ties)] = ties  # scale exactly 1: each tie halfway between two e4m3 values
    x[2, len(ties) :] = 0.0
    x = x.bfloat16()
    q, scale = quantize_fp8_triton(x, group)
    expected_q, expected_scale = quantize_per_token(x, group)  # CPU tensors: the PyTorch definition
    assert torch.equal(scale, expected_scale)
    assert torch.equal(q.view(torch.uint8), expected_q.contiguous().view(torch.uint8))
    assert q[2, 1:4].float().tolist() == [1.0, 1.25, -1.0]  # ties to even


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_softcap_logits(dtype):
    """The lm_head's output to capped fp32 logits in one pass: within 4e-6 of cap · tanh(x / cap) everywhere,
    from tiny logits (no cancellation near 0) to saturated ones (no overflow)."""
    g = torch.Generator().manual_seed(9)
    logits = torch.cat(
        [randn(3, 1000, dtype=dtype, generator=g, scale=40.0), torch.tensor([[0.0, 1e-6, -1e-6, 1e4]] * 3)], 1
    )
    logits = logits.to(dtype)
    out = softcap_logits_triton(logits, 30.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fused.softcap_logits(logits, 30.0), rtol=1e-6, atol=4e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sample_step_matches_the_reference_arithmetic(dtype):
    """Argmax, entropy and fed-back probabilities against the sampler's PyTorch step (`ReferenceStep`), with ties
    for the argmax's first-maximum rule and a vocabulary that is not a multiple of the kernel's block."""
    from dgemma_runtime.sampler import ReferenceStep

    g = torch.Generator().manual_seed(10)
    raw = torch.randn(2, 3, 5000, generator=g) * 4
    raw[0, 0, [7, 4000]] = 50.0  # two equal maxima: the first wins
    temperature = torch.tensor(0.7)
    argmax, entropy, samples, fed = sample_step_triton(raw, float(temperature), torch.tensor([1]), dtype)
    reference = ReferenceStep((2, 3), 5000, g, dtype).score(raw.clone(), temperature)
    assert torch.equal(argmax, reference.argmax) and argmax[0, 0] == 7
    torch.testing.assert_close(entropy, reference.entropy, rtol=1e-5, atol=1e-5)
    assert fed.dtype == dtype
    torch.testing.assert_close(fed.float(), reference.self_conditioning.float(), rtol=2e-3, atol=1e-7)
    assert samples.shape == (2, 3) and ((samples >= 0) & (samples < 5000)).all()


def test_sample_step_draws_from_the_softmax():
    """500 positions with one distribution over four tokens (the rest impossible): the counts must match
    p = (.1, .2, .3, .4) within 5 standard deviations; the same seed repeats them, another does not."""
    rows, V = 500, 40
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    raw = torch.full((rows, V), -1e4)
    raw[:, [3, 11, 22, 39]] = p.log()
    seed = torch.tensor([2024])
    _, _, samples, _ = sample_step_triton(raw, 1.0, seed, torch.float32)
    counts = torch.stack([(samples == t).sum() for t in (3, 11, 22, 39)]).double()
    assert counts.sum() == rows  # never an impossible token
    expected = rows * p.double()
    assert ((counts - expected).abs() <= 5 * (expected * (1 - p.double())).sqrt()).all(), counts
    assert torch.equal(sample_step_triton(raw[:50], 1.0, seed, torch.float32)[2], samples[:50])
    assert not torch.equal(sample_step_triton(raw[:50], 1.0, torch.tensor([7]), torch.float32)[2], samples[:50])


def test_empty_rows():
    x = torch.empty(0, H, dtype=torch.bfloat16)
    assert rms_norm_triton(x, None, EPS).shape == (0, H)
    assert gelu_mul_triton(x, x).shape == (0, H)


def test_decoder_with_fused_kernels_matches_pytorch(monkeypatch, tmp_path):
    """A bf16 model's encode + decode with every fused kernel switched in (interpreted) against the PyTorch path."""
    import dgemma_runtime
    from dgemma_runtime.cache import KVCache

    from tests.support.checkpoints import TinySpec, write_checkpoint

    folder = write_checkpoint(TinySpec(text={"hidden_size": 96}), tmp_path / "tiny")
    engine = dgemma_runtime.load(folder, device="cpu", dtype="bfloat16")
    model, config = engine.model, engine.config
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, config.vocab_size, (1, 11), generator=g)
    canvas = torch.randint(0, config.vocab_size, (1, 16), generator=g)
    probs = torch.softmax(torch.randn(1, 16, config.vocab_size, generator=g) * 3, -1)

    def logits() -> torch.Tensor:
        cache = KVCache(config, 1, 32, torch.device("cpu"), torch.bfloat16)
        with torch.inference_mode():
            model.encode(prompt, cache)
            return model.decode(canvas, cache, probs)

    unfused = logits()
    monkeypatch.setattr(backend, "on_gpu", lambda device: True)
    fused_logits = logits()
    # The experts' fused path rounds their output once (weighted and summed over k in fp32) where the reference
    # rounds three times: 0.75% apart at most here. A misrouted argument is far off (the dense and MoE branches
    # swapped at the combine kernel's call: 42%).
    assert ((fused_logits - unfused).abs().max() / unfused.abs().max()).item() < 2e-2
