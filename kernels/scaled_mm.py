"""FP8 × FP8 dense layers through `torch._scaled_mm` (cuBLASLt / CUTLASS) on GPUs with FP8 tensor cores.

Activations are quantized per token on the fly (row amax / 448, as FP8-dynamic checkpoints expect); the
per-channel weight is used as stored. The product runs in FP8 with both scales applied in the epilogue.
"""

from __future__ import annotations

import functools

import torch

from .formats import FP8_MAX, Fp8Weight


def scaled_mm_supported(device: torch.device | str) -> bool:
    """FP8 `_scaled_mm` needs CUDA compute capability 8.9 (Ada) or newer."""
    device = torch.device(device)
    return device.type == "cuda" and _capability(device.index) >= (8, 9)


@functools.cache
def _capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index) if torch.cuda.is_available() else (0, 0)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], fp32 scale [M, 1]) with x ≈ q · scale."""
    xf = x.float()
    scale = (xf.abs().amax(-1, keepdim=True) / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    return (xf / scale).to(torch.float8_e4m3fn), scale


def fp8_linear_scaled_mm(x: torch.Tensor, weight: Fp8Weight) -> torch.Tensor:
    """x [..., K] @ weight[N, K].T for a 2-D per-channel FP8 weight, in x.dtype."""
    if weight.q.dim() != 2 or weight.group < weight.q.shape[-1]:
        raise ValueError(f"scaled_mm takes a 2-D per-channel FP8 weight, not {list(weight.shape)} group {weight.group}")
    N, K = weight.q.shape
    xq, scale_a = quantize_per_token(x.reshape(-1, K))
    # mat2 must be column-major: the transpose of the row-major [N, K] weight is.
    out = torch._scaled_mm(xq, weight.q.t(), scale_a=scale_a, scale_b=weight.scale.reshape(1, N), out_dtype=x.dtype)
    return out.reshape(*x.shape[:-1], N)
