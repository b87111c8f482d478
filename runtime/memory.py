"""Device memory: what is free, whether a model's weights fit before anything is allocated (a CPU load past the
machine's memory gets the process killed without a word, a GPU one fails halfway through), and handing memory
back after a model is dropped."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import InsufficientMemoryError

if TYPE_CHECKING:
    from .checkpoint import CheckpointInfo


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new allocations: the GPU's free memory, or the kernel's MemAvailable; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return _meminfo("MemAvailable")


def device_memory(device: torch.device) -> tuple[str, int | None]:
    """(the device's name, its total memory or None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device), torch.cuda.mem_get_info(device)[1]
    return "CPU", _meminfo("MemTotal")


def _meminfo(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _ensure_fits(needed: int, available: int | None, device: torch.device, dtype: torch.dtype) -> None:
    """One line that says what to try instead when the weights would not fit."""
    if available is None or needed <= available:
        return
    where = "on the GPU" if device.type == "cuda" else "in memory"
    advice = (
        "a quantized variant (diffusiongemma:26b-fp8 or :26b-nvfp4), --quant fp8, or --device cpu"
        if device.type == "cuda"
        else ("--dtype bfloat16, " if dtype == torch.float32 else "") + "--quant int8 or nf4, or a quantized variant"
    )
    name = str(dtype).removeprefix("torch.")
    raise InsufficientMemoryError(
        f"not enough memory for this model: its weights take {needed / 1e9:.1f} GB in {name} "
        f"but {available / 1e9:.1f} GB is free {where}; try {advice}"
    )


def fitting_dtype(
    info: CheckpointInfo,
    device: torch.device,
    dtype: torch.dtype,
    auto: bool,
    quant: str | None,
    quant_dense: bool,
) -> torch.dtype:
    """`dtype`, once the weights are known to fit on `device` (else one clear error). With `auto` on a CPU too
    small for the model in float32 (the CPU default: exact, and fast on any CPU), bfloat16 instead, the released
    checkpoints' own dtype: loading at half the memory beats not loading."""
    available = available_bytes(device)

    def needed(dtype: torch.dtype) -> int:
        return sum(info.loaded(dtype, quant, quant_dense).values())

    if auto and device.type == "cpu" and available is not None and needed(dtype) > 0.8 * available:
        dtype = torch.bfloat16
    _ensure_fits(needed(dtype), available, device, dtype)
    return dtype


def reclaim() -> None:
    """Free what is no longer referenced now, and hand the GPU allocator's cached blocks back: call after dropping
    a model, before loading the next one, so the memory check and the load see the memory as free."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
