"""The decoder layer's elementwise chains (norms, residual adds, RoPE, gated GELU, routing), one call each.

Counted on the CPU, a 26B decoder forward runs ~4,500 non-view ops, 3/4 of them elementwise passes over a few MB
(an RMSNorm alone is eight: cast, square, mean, add, power, multiply, weight cast, multiply). On a GPU each is a
kernel of a few µs even when replayed from a CUDA graph, so together they cost more than the experts. On a GPU
(`backend.on_gpu`) each function below is one Triton kernel (`triton_fused.py`); everywhere else it is the PyTorch
code here, which is also the definition the kernels follow: the same fp32 math and the same roundings to the
activation dtype between steps, as the reference computes them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backend import gpu_kernel


def sample_step(
    logits: torch.Tensor, temperature: float, seed: torch.Tensor, probs_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A denoising step's arithmetic over the vocabulary in one kernel, on a GPU (where `backend.on_gpu` holds).
    logits [..., V] fp32, left unchanged; seed a device int64 [1]. Returns, per position: the argmax and the
    entropy of softmax(logits / temperature), a sample from it (Philox noise from `seed`, as an exponential race:
    argmax p / q, q ~ Exp(1), as torch.multinomial draws), and the self-conditioning probabilities: that softmax
    computed from the scaled logits cast to `probs_dtype`, in `probs_dtype`. The sampler's PyTorch code
    (`dgemma_runtime.sampler.ReferenceStep`) is the definition, and stays the path everywhere else."""
    from .triton_fused import sample_step_triton

    return sample_step_triton(logits, temperature, seed, probs_dtype)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm in fp32 with pow(-0.5) (not rsqrt) and a plain `* w` scale, cast back to x's dtype (§2.4)."""
    xf = x.float()
    y = xf * torch.pow(xf.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    if weight is not None:
        y = y * weight.float()
    return y.type_as(x)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x [B, S, heads, D] with cos/sin [S, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


@gpu_kernel("triton_fused.rms_norm_triton")
def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    return rms_norm_reference(x, weight, eps)


@gpu_kernel("triton_fused.add_rms_norm_triton")
def add_rms_norm(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """residual + RMSNorm(x): a sublayer's post-norm and its residual connection."""
    return residual + rms_norm_reference(x, weight, eps)


@gpu_kernel("triton_fused.router_input_triton")
def router_input(h: torch.Tensor, scale: torch.Tensor, multiplier: float, eps: float) -> torch.Tensor:
    """RMSNorm(h) without a weight, times `scale`, times `multiplier`: the router's input (§2.6)."""
    return rms_norm_reference(h, None, eps) * scale * multiplier


@gpu_kernel("triton_fused.rms_norm_rope_triton")
def rms_norm_rope(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float
) -> torch.Tensor:
    """RoPE over the RMSNorm of each head: x [B, S, heads, D], cos/sin [S, D] (the q and k norms)."""
    return apply_rope(rms_norm_reference(x, weight, eps), cos, sin)


@gpu_kernel("triton_fused.combine_feed_forward_triton")
def combine_feed_forward(
    h: torch.Tensor,
    dense: torch.Tensor,
    moe: torch.Tensor,
    norms: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    scalar: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """(h + N(N1(dense) + N2(moe))) * scalar, with `norms` = the weights of (N1, N2, N) (§2.6)."""
    dense_norm, moe_norm, out_norm = norms
    both = rms_norm_reference(dense, dense_norm, eps) + rms_norm_reference(moe, moe_norm, eps)
    return (h + rms_norm_reference(both, out_norm, eps)) * scalar


@gpu_kernel("triton_fused.route_triton")
def route(scores: torch.Tensor, top_k: int, per_expert_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [N, E] -> the top_k experts of each token [N, K] and their weights (fp32): softmax, top-k,
    renormalised over the chosen experts, times each expert's scale (§2.6)."""
    probs = F.softmax(scores, dim=-1, dtype=torch.float32)
    weights, experts = torch.topk(probs, k=top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * per_expert_scale[experts], experts


@gpu_kernel("triton_fused.softcap_logits_triton", when=lambda logits, cap: cap is not None and not logits.requires_grad)
def softcap_logits(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """fp32 logits, cap · tanh(logits / cap) when capped. One pass on a GPU, from the lm_head's bf16 output: the
    PyTorch definition writes [L, V] fp32 four times (1.1 GB per 26B step)."""
    out = logits.float()
    if cap is None:
        return out
    if out.requires_grad:  # training (train_tiny.py): tanh's backward reads its output, which in place would overwrite
        return torch.tanh(out / cap) * cap
    return out.div_(cap).tanh_().mul_(cap)  # in place: no new [L, V] tensors


@gpu_kernel("triton_fused.gelu_mul_triton")
def gelu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gelu(gate) * up (tanh GELU): the gated MLPs' activation. Both 2-D or more, same shape; any row stride."""
    return F.gelu(gate, approximate="tanh") * up
