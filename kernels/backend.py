"""What this machine offers the kernels: Triton, and the GPU's generation."""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def scaled_mm_supported(device: torch.device | str) -> bool:
    """FP8 tensor cores (`_scaled_mm`, FP8 × FP8 in Triton) need CUDA compute capability 8.9 (Ada) or newer."""
    device = torch.device(device)
    return device.type == "cuda" and _capability(device.index) >= (8, 9)


def is_hopper(device: torch.device | str) -> bool:
    """sm90 (H100, H200): the only architecture with wgmma, Triton's 64-row tensor-core tiles."""
    device = torch.device(device)
    return device.type == "cuda" and _capability(device.index)[0] == 9


@functools.cache
def _capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index) if torch.cuda.is_available() else (0, 0)


def describe(device: torch.device, weight_formats: Iterable[str]) -> str:
    """How this machine runs a model whose weights come in `weight_formats` ("fp8", "nvfp4", "bfloat16", ...):
    for reports, since it changes speed and, for FP8, the arithmetic."""
    if device.type != "cuda":
        kernels = "PyTorch (CPU)"
    elif not triton_available():
        kernels = "PyTorch (no Triton installed)"
    else:
        from . import fused

        major, minor = _capability(device.index)
        kernels = f"Triton (sm{major}{minor})" + ("" if fused.enabled else ", fused kernels off")
    if "fp8" in weight_formats:
        fp8_cores = device.type == "cuda" and triton_available() and scaled_mm_supported(device)
        kernels += "; FP8 × FP8, activations quantized per token" if fp8_cores else "; FP8 weights widened (W8A16)"
    return kernels
