"""`load`: a Hugging Face-format DiffusionGemma folder into an `Engine`, on a device, in a dtype, quantized or not."""

from __future__ import annotations

import traceback
from pathlib import Path

import torch

from . import memory
from .checkpoint import inspect
from .errors import OptionError
from .generate import Engine
from .loading import LoadReporter, ProgressCallback
from .memory import reclaim
from .model import DiffusionGemma
from .quantization import install_quantized, quantize_at_load
from .reading import advise_first_bytes
from .tokenizer import Tokenizer
from .weights import load_state

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None) picks CUDA when present, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("device 'cuda' requested but no CUDA GPU is available")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' (or None): bfloat16 on a GPU, float32 on the CPU (`load` falls back to bfloat16 on a CPU whose
    memory cannot hold the model in float32)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise OptionError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}") from None


def load(
    path: str | Path,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    quant: str | None = None,
    quant_dense: bool = False,
    cuda_graphs: bool = False,
    progress: ProgressCallback | None = None,
) -> Engine:
    """Load a Hugging Face-format DiffusionGemma folder: config.json, safetensors, optional tokenizer.json.

    Quantized checkpoints (FP8, NVFP4) load as they are stored. `quant` ("fp8", "nvfp4", "int8", "nf4")
    quantizes a full-precision checkpoint's experts while loading, and with `quant_dense` also attention and
    the dense MLP. `cuda_graphs` replays denoising steps from CUDA graphs (see `graphs.py`).

    `progress` hears the load as events (`loading.py`): bytes and tensors read, quantized, moved to the GPU. A load
    stopped by an exception, Ctrl-C or one the callback raises included, keeps nothing of what it read.
    """
    report = LoadReporter(progress)
    try:
        engine = _load(path, device, dtype, quant, quant_dense, cuda_graphs, report)
    except BaseException as exc:
        # The traceback holds the frames that held the weights read so far: clear them, then hand the memory back.
        traceback.clear_frames(exc.__traceback__)
        reclaim()
        raise
    report.finish()
    return engine


def _load(
    path: str | Path,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    quant: str | None,
    quant_dense: bool,
    cuda_graphs: bool,
    report: LoadReporter,
) -> Engine:
    folder = Path(path)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    if cuda_graphs and target.type != "cuda":
        raise OptionError(f"CUDA graphs need a CUDA device, not {target.type!r}")
    advise_first_bytes(folder)  # the disk starts on the weights while the headers are checked
    info = inspect(folder)  # validates names and shapes before anything is read
    config, scheme = info.config, info.scheme
    if quant is not None and scheme is not None:
        raise OptionError(f"--quant applies to full-precision checkpoints; this one is already {scheme.source}")
    transform = quantize_at_load(quant, quant_dense) if quant is not None else None
    auto = dtype in (None, "auto")
    torch_dtype = memory.fitting_dtype(info, target, torch_dtype, auto, quant, quant_dense)
    state = load_state(info.tensors, info.plan, target, torch_dtype, scheme, transform, report=report)
    with torch.device("meta"):
        model = DiffusionGemma(config, info.vision)
    model.load_state_dict(install_quantized(model, state), strict=True, assign=True)
    for name, value in DiffusionGemma.rope_buffers(config).items():
        setattr(model, name, value.to(target))
    model.eval().requires_grad_(False)
    tokenizer_file = folder / "tokenizer.json"
    tokenizer = Tokenizer(tokenizer_file) if tokenizer_file.exists() else None
    weights = info.weight_memory(torch_dtype, quant, quant_dense)
    return Engine(model, config, info.defaults, tokenizer, cuda_graphs, weights)
