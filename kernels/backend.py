"""Which implementation a kernel entry point runs: the Triton kernel on a GPU, the PyTorch reference elsewhere.

One switch for every entry point: DGEMMA_FUSED_KERNELS=0 keeps the PyTorch ops on a GPU too (a way around a kernel
that misbehaves on some GPU); scripts that time the kernels against the ops flip `enabled` in one process. Tests and
scripts/inspect_kernels.py pretend CPU tensors are CUDA ones by replacing `on_gpu`.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Iterable
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")

enabled = os.environ.get("DGEMMA_FUSED_KERNELS", "1") != "0"


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def on_gpu(device: torch.device) -> bool:
    """Whether our GPU kernels serve tensors on `device`: CUDA, Triton importable, and the switch on."""
    return enabled and device.type == "cuda" and triton_available()


def gpu_kernel(path: str, when: Callable[..., bool] | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorates a PyTorch reference: where its first argument lives `on_gpu` (and `when(*args)` holds, for the
    inputs the kernel takes), the call goes to `path` ("module.function" in this package) with the same arguments.
    The module is imported on the first such call, so Triton is only needed on a GPU."""
    module, name = path.rsplit(".", 1)

    def decorate(reference: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(reference)
        def dispatch(*args: P.args, **kwargs: P.kwargs) -> R:
            if on_gpu(args[0].device) and (when is None or when(*args, **kwargs)):
                return getattr(importlib.import_module(f"{__package__}.{module}"), name)(*args, **kwargs)
            return reference(*args, **kwargs)

        return dispatch

    return decorate


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
        major, minor = _capability(device.index)
        kernels = f"Triton (sm{major}{minor})" + ("" if enabled else ", fused kernels off")
    if "fp8" in weight_formats:
        fp8_cores = on_gpu(device) and scaled_mm_supported(device)
        kernels += "; FP8 × FP8, activations quantized per token" if fp8_cores else "; FP8 weights widened (W8A16)"
    return kernels
