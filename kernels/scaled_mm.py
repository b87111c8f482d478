"""FP8 × FP8 dense layers through `torch._scaled_mm` (cuBLASLt / CUTLASS) on GPUs with FP8 tensor cores.

Activations are quantized per token on the fly (row amax / 448, as FP8-dynamic checkpoints expect); the
per-channel weight is used as stored. The product runs in FP8 with both scales applied in the epilogue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backend import gpu_kernel
from .formats import FP8_MAX, Fp8Weight


# Triton blocks are powers of two: a run of another length takes the PyTorch path.
@gpu_kernel("triton_fused.quantize_fp8_triton", when=lambda x, group=0: group & (group - 1) == 0)
def quantize_per_token(x: torch.Tensor, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], fp32 scale [M, G]) with x ≈ q · scale: one scale per token (G = 1), or with
    `group`, per token and run of `group` columns (G = ceil(K / group), the last run possibly shorter).
    On a GPU one Triton kernel; here, the PyTorch definition it follows."""
    M, K = x.shape
    group = group or K
    runs = -(-K // group)
    xf = F.pad(x.float(), (0, runs * group - K)).view(M, runs, group)
    scale = (xf.abs().amax(-1, keepdim=True) / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    q = (xf / scale).to(torch.float8_e4m3fn).view(M, runs * group)[:, :K]
    return q, scale.view(M, runs)


def fp8_linear_scaled_mm(x: torch.Tensor, weight: Fp8Weight) -> torch.Tensor:
    """x [..., K] @ weight[N, K].T for a 2-D per-channel FP8 weight, in x.dtype."""
    if weight.q.dim() != 2 or weight.group < weight.q.shape[-1]:
        raise ValueError(f"scaled_mm takes a 2-D per-channel FP8 weight, not {list(weight.shape)} group {weight.group}")
    N, K = weight.q.shape
    xq, scale_a = quantize_per_token(x.reshape(-1, K))
    # mat2 must be column-major: the transpose of the row-major [N, K] weight is.
    out = torch._scaled_mm(xq, weight.q.t(), scale_a=scale_a, scale_b=weight.scale.reshape(1, N), out_dtype=x.dtype)
    return out.reshape(*x.shape[:-1], N)
