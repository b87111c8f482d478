"""Triton kernels for `fused.py`: one program per row (a token, or a token's head), math in fp32.

Each kernel rounds to the activation dtype wherever the PyTorch definition in `fused.py` materialises a tensor, so
the fused result differs from it only by reduction order in the mean square (and by the GPU's sqrt and exp). The
launchers read no device values on the host, so the decoder step stays capturable as a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _row_warps(block: int) -> int:
    """Warps for a program that holds a whole row of `block` elements: ~512 per warp for the wide rows."""
    return max(1, min(8, block // 512))


def _per_row(kernel, x: torch.Tensor, eps: float, *args, **constexprs) -> torch.Tensor:
    """Launch a row kernel `kernel(x, out, D, eps, *args)` with one program per row of x's last dim; the whole
    row in one block."""
    flat = x.contiguous().view(-1, x.shape[-1])
    out = torch.empty_like(flat)
    if flat.numel():
        D = flat.shape[1]
        block = triton.next_power_of_2(D)
        kernel[(flat.shape[0],)](flat, out, D, eps, *args, BLOCK=block, num_warps=_row_warps(block), **constexprs)
    return out.view(x.shape)


def rms_norm_triton(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """RMSNorm(x) * weight over the last dim, plus `residual` when given."""
    return _per_row(
        _rms_norm_kernel,
        x,
        eps,
        x if weight is None else weight,
        x if residual is None else residual.contiguous(),
        HAS_WEIGHT=weight is not None,
        HAS_RESIDUAL=residual is not None,
    )


def add_rms_norm_triton(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return rms_norm_triton(x, weight, eps, residual)


def router_input_triton(h: torch.Tensor, scale: torch.Tensor, multiplier: float, eps: float) -> torch.Tensor:
    return _per_row(_router_input_kernel, h, eps, scale, multiplier)


def rms_norm_rope_triton(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float
) -> torch.Tensor:
    """x [B, S, heads, D]; cos/sin [S, D]."""
    _, S, heads, _ = x.shape
    return _per_row(_rms_norm_rope_kernel, x, eps, weight, cos.contiguous(), sin.contiguous(), heads, S)


def combine_feed_forward_triton(
    h: torch.Tensor,
    dense: torch.Tensor,
    moe: torch.Tensor,
    norms: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    scalar: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    return _per_row(_combine_feed_forward_kernel, h, eps, dense.contiguous(), moe.contiguous(), *norms, scalar)


def gelu_mul_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Rows may be strided (the two halves of a fused gate_up output); the last dim must be contiguous."""
    N = gate.shape[-1]
    gate2, up2 = (t if t.stride(-1) == 1 else t.contiguous() for t in (gate, up))
    gate2, up2 = gate2.reshape(-1, N), up2.reshape(-1, N)
    out = torch.empty(gate2.shape, dtype=gate.dtype, device=gate.device)
    if out.numel():
        block = min(1024, triton.next_power_of_2(N))
        grid = (gate2.shape[0], triton.cdiv(N, block))
        _gelu_mul_kernel[grid](gate2, up2, out, N, gate2.stride(0), up2.stride(0), BLOCK=block, num_warps=4)
    return out.view(gate.shape)


def route_triton(scores: torch.Tensor, top_k: int, per_expert_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [N, E] -> (weights fp32 [N, K], experts int64 [N, K]); one program per token."""
    flat = scores.contiguous()
    N, E = flat.shape
    weights = torch.empty(N, top_k, dtype=torch.float32, device=scores.device)
    experts = torch.empty(N, top_k, dtype=torch.int64, device=scores.device)
    if N:
        _route_kernel[(N,)](
            flat,
            per_expert_scale,
            weights,
            experts,
            E,
            TOP_K=top_k,
            BLOCK_E=triton.next_power_of_2(E),
            BLOCK_K=triton.next_power_of_2(top_k),
        )
    return weights, experts


def quantize_fp8_triton(x: torch.Tensor, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`scaled_mm.quantize_per_token` in one pass: x [M, K] -> (e4m3 [M, K], fp32 scales [M, G]); `group` 0 (one
    scale per token) or a power of two."""
    flat = x.contiguous()
    M, K = flat.shape
    block = max(triton.next_power_of_2(K), group)
    runs = triton.cdiv(K, group) if group else 1
    q = torch.empty(M, K, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(M, runs, dtype=torch.float32, device=x.device)
    if M:
        _quantize_fp8_kernel[(M,)](
            flat, q, scale, K, runs, GROUP=group or block, BLOCK=block, num_warps=_row_warps(block)
        )
    return q, scale


def softcap_logits_triton(logits: torch.Tensor, cap: float) -> torch.Tensor:
    flat = logits.contiguous().view(-1)
    out = torch.empty(flat.shape, dtype=torch.float32, device=logits.device)
    block = 4096
    if flat.numel():
        _softcap_kernel[(triton.cdiv(flat.numel(), block),)](flat, out, flat.numel(), cap, BLOCK=block, num_warps=8)
    return out.view(logits.shape)


def sample_step_triton(
    logits: torch.Tensor, temperature: float, seed: torch.Tensor, probs_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    *lead, V = logits.shape
    flat = logits.contiguous().view(-1, V)
    R = flat.shape[0]
    argmax = torch.empty(R, dtype=torch.int64, device=logits.device)
    entropy = torch.empty(R, dtype=torch.float32, device=logits.device)
    samples = torch.empty(R, dtype=torch.int64, device=logits.device)
    probs = torch.empty(R, V, dtype=probs_dtype, device=logits.device)
    if R:
        _sample_step_kernel[(R,)](
            flat,
            seed,
            argmax,
            entropy,
            samples,
            probs,
            V,
            # PyTorch on a GPU divides a tensor by a scalar as a multiplication by its fp32 reciprocal: so here.
            float(1.0 / torch.tensor(temperature, dtype=torch.float32)),
            ROUND_LOGITS=probs_dtype != torch.float32,
            BLOCK=2048,
            num_warps=8,
        )
    return argmax.view(lead), entropy.view(lead), samples.view(lead), probs.view(*lead, V)


# -- kernels ---------------------------------------------------------------------------------------------------


@triton.jit
def rounded(v, dtype: tl.constexpr):
    """fp32 -> the activation dtype -> fp32: where the PyTorch definition stores a tensor.

    bf16 is rounded to nearest-even by hand, as the GPU's cast does: the Triton interpreter (the CPU tests)
    truncates in its cast. The result is then exact in bf16, so any cast of it agrees on both."""
    if dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return v.to(dtype).to(tl.float32)


@triton.jit
def store_rounded(ptrs, v, mask):
    """Store fp32 `v` in the pointer's dtype, rounded as `rounded` does."""
    tl.store(ptrs, rounded(v, ptrs.dtype.element_ty).to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _inverse_rms(x, D, eps):
    """(mean(x²) + eps)^-0.5 of one fp32 row (masked lanes hold 0)."""
    return 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)


@triton.jit
def _normalized(x, w_ptr, cols, ok, D, eps, dtype: tl.constexpr):
    """RMSNorm of one fp32 row times its weight, rounded to `dtype` (as a tensor of that dtype holds it)."""
    return rounded(x * _inverse_rms(x, D, eps) * tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32), dtype)


@triton.jit
def _rms_norm_kernel(
    x_ptr, out_ptr, D, eps, w_ptr, res_ptr, BLOCK: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_RESIDUAL: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64) * D
    cols = tl.arange(0, BLOCK)
    ok = cols < D
    dtype = out_ptr.dtype.element_ty
    x = tl.load(x_ptr + row + cols, mask=ok, other=0.0).to(tl.float32)
    y = _normalized(x, w_ptr, cols, ok, D, eps, dtype) if HAS_WEIGHT else x * _inverse_rms(x, D, eps)
    if HAS_RESIDUAL:
        y = tl.load(res_ptr + row + cols, mask=ok, other=0.0).to(tl.float32) + rounded(y, dtype)
    store_rounded(out_ptr + row + cols, y, ok)


@triton.jit
def _router_input_kernel(x_ptr, out_ptr, D, eps, scale_ptr, multiplier, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * D
    cols = tl.arange(0, BLOCK)
    ok = cols < D
    dtype = out_ptr.dtype.element_ty
    x = tl.load(x_ptr + row + cols, mask=ok, other=0.0).to(tl.float32)
    y = rounded(x * _inverse_rms(x, D, eps), dtype) * tl.load(scale_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    store_rounded(out_ptr + row + cols, rounded(y, dtype) * multiplier, ok)


@triton.jit
def _rms_norm_rope_kernel(x_ptr, out_ptr, D, eps, w_ptr, cos_ptr, sin_ptr, heads, S, BLOCK: tl.constexpr):
    r = tl.program_id(0)
    row = r.to(tl.int64) * D
    position = (r // heads) % S
    cols = tl.arange(0, BLOCK)
    ok = cols < D
    dtype = out_ptr.dtype.element_ty
    x = tl.load(x_ptr + row + cols, mask=ok, other=0.0).to(tl.float32)
    inv = _inverse_rms(x, D, eps)
    normed = rounded(x * inv * tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32), dtype)
    # Rotate-half: element c pairs with c ± D/2; read the partner again rather than permute registers.
    half = D // 2
    partner = tl.where(cols < half, cols + half, cols - half)
    xp = tl.load(x_ptr + row + partner, mask=ok, other=0.0).to(tl.float32)
    partner_normed = rounded(xp * inv * tl.load(w_ptr + partner, mask=ok, other=0.0).to(tl.float32), dtype)
    rotated = tl.where(cols < half, -partner_normed, partner_normed)
    cos = tl.load(cos_ptr + position * D + cols, mask=ok, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + position * D + cols, mask=ok, other=0.0).to(tl.float32)
    y = rounded(normed * cos, dtype) + rounded(rotated * sin, dtype)
    store_rounded(out_ptr + row + cols, y, ok)


@triton.jit
def _combine_feed_forward_kernel(
    h_ptr, out_ptr, D, eps, dense_ptr, moe_ptr, w_dense_ptr, w_moe_ptr, w_out_ptr, scalar_ptr, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64) * D
    cols = tl.arange(0, BLOCK)
    ok = cols < D
    dtype = out_ptr.dtype.element_ty
    dense = tl.load(dense_ptr + row + cols, mask=ok, other=0.0).to(tl.float32)
    moe = tl.load(moe_ptr + row + cols, mask=ok, other=0.0).to(tl.float32)
    both = rounded(
        _normalized(dense, w_dense_ptr, cols, ok, D, eps, dtype) + _normalized(moe, w_moe_ptr, cols, ok, D, eps, dtype),
        dtype,
    )
    h = tl.load(h_ptr + row + cols, mask=ok, other=0.0).to(tl.float32)
    y = rounded(h + _normalized(both, w_out_ptr, cols, ok, D, eps, dtype), dtype)
    store_rounded(out_ptr + row + cols, y * tl.load(scalar_ptr).to(tl.float32), ok)


@triton.jit
def _gelu_mul_kernel(gate_ptr, up_ptr, out_ptr, N, stride_gate, stride_up, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < N
    dtype = out_ptr.dtype.element_ty
    g = tl.load(gate_ptr + row * stride_gate + cols, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + row * stride_up + cols, mask=ok, other=0.0).to(tl.float32)
    # tanh GELU, 0.5·g·(1 + tanh z) = g / (1 + exp(-2z)): no cancellation, and exp overflow gives -0.
    z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
    gelu = g / (1.0 + tl.exp(-2.0 * z))
    store_rounded(out_ptr + row * N + cols, rounded(gelu, dtype) * u, ok)


@triton.jit
def _route_kernel(
    scores_ptr,
    scale_ptr,
    weights_ptr,
    experts_ptr,
    E,
    TOP_K: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    ids = tl.arange(0, BLOCK_E)
    s = tl.load(scores_ptr + token * E + ids, mask=ids < E, other=float("-inf")).to(tl.float32)
    p = tl.exp(s - tl.max(s, axis=0))
    p = p / tl.sum(p, axis=0)
    # Top-k by repeated arg-max: the first index among equal maxima, in descending order, as torch.topk gives.
    slots = tl.arange(0, BLOCK_K)
    chosen_p = tl.zeros((BLOCK_K,), dtype=tl.float32)
    chosen = tl.zeros((BLOCK_K,), dtype=tl.int32)
    remaining = tl.where(ids < E, p, -1.0)
    for k in tl.static_range(TOP_K):
        best = tl.max(remaining, axis=0)
        index = tl.min(tl.where(remaining == best, ids, BLOCK_E), axis=0)
        chosen_p = tl.where(slots == k, best, chosen_p)
        chosen = tl.where(slots == k, index, chosen)
        remaining = tl.where(ids == index, -1.0, remaining)
    valid = slots < TOP_K
    total = tl.sum(tl.where(valid, chosen_p, 0.0), axis=0)
    scale = tl.load(scale_ptr + chosen, mask=valid, other=0.0).to(tl.float32)
    tl.store(weights_ptr + token * TOP_K + slots, chosen_p / total * scale, mask=valid)
    tl.store(experts_ptr + token * TOP_K + slots, chosen.to(tl.int64), mask=valid)


@triton.jit
def _round_to_e4m3(v):
    """Round fp32 to the nearest e4m3 value (ties to even), staying in fp32: the cast that follows is then exact
    on the GPU and in the interpreter, whose own casts truncate. Callers keep |v| <= 448."""
    bits = v.to(tl.uint32, bitcast=True)  # normal e4m3 (|v| >= 2^-6): 3 mantissa bits of fp32's 23
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & 0xFFF00000).to(tl.float32, bitcast=True)
    subnormal = (v + 24576.0) - 24576.0  # multiples of 2^-9: the ulp of 1.5 · 2^14
    return tl.where(tl.abs(v) < 0.015625, subnormal, normal)


@triton.jit
def _quantize_fp8_kernel(x_ptr, q_ptr, scale_ptr, K, runs, GROUP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * K + cols, mask=cols < K, other=0.0).to(tl.float32)
    groups = tl.reshape(x, (BLOCK // GROUP, GROUP))
    scale = tl.maximum(tl.div_rn(tl.max(tl.abs(groups), axis=1), 448.0), 1.1754943508222875e-38)
    q = tl.reshape(_round_to_e4m3(tl.div_rn(groups, scale[:, None])), (BLOCK,))
    tl.store(q_ptr + row * K + cols, q.to(q_ptr.dtype.element_ty), mask=cols < K)
    g = tl.arange(0, BLOCK // GROUP)
    tl.store(scale_ptr + row * runs + g, scale, mask=g < runs)


@triton.jit
def _softcap_kernel(x_ptr, out_ptr, n, cap, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    z = tl.load(x_ptr + i, mask=i < n, other=0.0).to(tl.float32) / cap
    # tanh from exp(-2|z|) ∈ (0, 1]: no overflow, and within ~1e-7 of tanh (the GPU's tanhf is not in the
    # interpreter; sampling never depends on the last bits of a logit).
    t = tl.exp(-2.0 * tl.abs(z))
    tanh = (1.0 - t) / (1.0 + t)
    tl.store(out_ptr + i, cap * tl.where(z < 0, -tanh, tanh), mask=i < n)


@triton.jit
def _first_max(values, index, best, best_index):
    """Fold a block into a running (maximum, index of its first occurrence); `index` increases along the block."""
    block_max = tl.max(values, axis=0)
    block_index = tl.min(tl.where(values == block_max, index, 2147483647), axis=0)
    return tl.maximum(best, block_max), tl.where(block_max > best, block_index, best_index)


@triton.jit
def _uniforms(seed, row, v0, V, BLOCK: tl.constexpr):
    """U[0, 1) for the BLOCK entries of a row's chunk at v0: each Philox call yields four, one per quarter."""
    quarter = tl.arange(0, BLOCK // 4)
    counter = (row * tl.cdiv(V, BLOCK) + v0 // BLOCK) * (BLOCK // 4) + quarter
    u0, u1, u2, u3 = tl.rand4x(seed, counter)
    j = tl.arange(0, 4)[:, None]
    u = tl.where(j == 0, u0[None, :], tl.where(j == 1, u1[None, :], tl.where(j == 2, u2[None, :], u3[None, :])))
    return tl.reshape(u, (BLOCK,))


@triton.jit
def _sample_step_kernel(
    logits_ptr,
    seed_ptr,
    argmax_ptr,
    entropy_ptr,
    samples_ptr,
    probs_ptr,
    V,
    inverse_temperature,
    ROUND_LOGITS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = row * V
    seed = tl.load(seed_ptr)
    cols = tl.arange(0, BLOCK)
    probs_dtype = probs_ptr.dtype.element_ty
    # One pass: the first argmax, an online softmax (max m, sum s of e^(z-m), sum of e^(z-m)·z for the entropy),
    # the exponential race, and the softmax of the rounded logits that self-conditioning feeds back.
    m, s, sz = float("-inf"), 0.0, 0.0
    best, best_index = float("-inf"), 0
    race, race_index = float("-inf"), 0
    m_fed, s_fed = float("-inf"), 0.0
    for v0 in range(0, V, BLOCK):
        v = v0 + cols
        ok = v < V
        z = tl.load(logits_ptr + base + v, mask=ok, other=float("-inf")) * inverse_temperature
        best, best_index = _first_max(z, v, best, best_index)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        e = tl.where(ok, tl.exp(z - m_new), 0.0)
        rescale = tl.exp(m - m_new)
        s = s * rescale + tl.sum(e, axis=0)
        sz = sz * rescale + tl.sum(e * tl.where(ok, z, 0.0), axis=0)
        m = m_new
        # argmax p / q with q = -log u ~ Exp(1): u = 0 gives q = inf, a key of -inf that never wins.
        key = tl.where(ok, z - tl.log(-tl.log(_uniforms(seed, row, v0, V, BLOCK))), float("-inf"))
        race, race_index = _first_max(key, v, race, race_index)
        if ROUND_LOGITS:
            zr = rounded(z, probs_dtype)
            m_fed_new = tl.maximum(m_fed, tl.max(zr, axis=0))
            s_fed = s_fed * tl.exp(m_fed - m_fed_new) + tl.sum(tl.where(ok, tl.exp(zr - m_fed_new), 0.0), axis=0)
            m_fed = m_fed_new
    tl.store(argmax_ptr + row, best_index.to(tl.int64))
    tl.store(samples_ptr + row, race_index.to(tl.int64))
    # H = -sum p log p with log p = z - m - log s
    tl.store(entropy_ptr + row, m + tl.log(s) - sz / s)
    for v0 in range(0, V, BLOCK):
        v = v0 + cols
        ok = v < V
        z = tl.load(logits_ptr + base + v, mask=ok, other=float("-inf")) * inverse_temperature
        p = tl.exp(rounded(z, probs_dtype) - m_fed) / s_fed if ROUND_LOGITS else tl.exp(z - m) / s
        store_rounded(probs_ptr + base + v, p, ok)
