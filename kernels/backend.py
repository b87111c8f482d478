"""What this machine offers the kernels: Triton, and the GPU's generation."""

from __future__ import annotations

import functools

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
