"""Whether a model's weights fit on their device, judged from the checkpoint's headers before anything is
allocated: a CPU load past the machine's memory gets the process killed without a word, a GPU one fails
halfway through."""

from __future__ import annotations

import gc
import math
from pathlib import Path

import torch

from .config import TextConfig
from .errors import InsufficientMemoryError
from .quantization import is_quantization_target
from .weights import module_name, plan_load, read_header, shard_files

# (bytes per weight, bytes per row) once quantized at load: codes and block scales (e4m3 per 16 weights for
# NVFP4, fp32 per 64 for NF4), then the fp32 scale of each row.
QUANTIZED_BYTES = {"fp8": (1.0, 4), "nvfp4": (0.5625, 4), "int8": (1.0, 4), "nf4": (0.5625, 0)}


def weight_bytes(folder: Path, config: TextConfig, dtype: torch.dtype, quant: str | None, quant_dense: bool) -> int:
    """Bytes the loaded weights take: a checkpoint's quantized weights as stored, the rest at `dtype`, or in the
    `quant` format where quantizing at load covers them."""
    found = read_header(shard_files(folder))
    plan = plan_load(found, config)

    def full_precision(module: str, shape: tuple[int, ...]) -> float:
        numel = math.prod(shape)
        if quant is not None and is_quantization_target(module, quant_dense):
            per_weight, per_row = QUANTIZED_BYTES[quant]
            return numel * per_weight + numel // shape[-1] * per_row
        return numel * dtype.itemsize

    total = sum(full_precision(module_name(name), shape) for name, shape in plan.plain.items())
    pieces = [*plan.linears.items(), *((m, s) for m, experts in plan.experts.items() for e in experts for s in e)]
    for module, stored in pieces:
        if stored.form == "plain":
            total += full_precision(module, (stored.N, stored.K))
        else:
            total += sum(found[name].nbytes for name in stored.expected if name in found)  # missing: load's error
    return int(total)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new allocations: the GPU's free memory, or the kernel's MemAvailable; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
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
    folder: Path,
    config: TextConfig,
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
    needed = weight_bytes(folder, config, dtype, quant, quant_dense)
    if auto and device.type == "cpu" and available is not None and needed > 0.8 * available:
        dtype = torch.bfloat16
        needed = weight_bytes(folder, config, dtype, quant, quant_dense)
    _ensure_fits(needed, available, device, dtype)
    return dtype


def reclaim() -> None:
    """Free what is no longer referenced now, and hand the GPU allocator's cached blocks back: call after dropping
    a model, before loading the next one, so the memory check and the load see the memory as free."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
