"""What a checkpoint folder holds, from its configs and safetensors headers alone (nothing is loaded): parameters,
bytes by storage format, quantization, and the memory it needs at a context. Loading, `dgemma show`, the server's
/api/show, `pull`'s verification and the memory check all read a model through `inspect`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .cache import cache_bytes, step_workspace_bytes
from .config import GenerationDefaults, TextConfig, load_config
from .errors import CheckpointError
from .memory import available_bytes, device_memory
from .quantization import (
    SAFETENSORS_DTYPES,
    QuantScheme,
    TensorInfo,
    detect_scheme,
    is_quantization_target,
)
from .vision import VisionConfig, read_vision_config
from .weights import (
    LoadPlan,
    check_copies,
    module_name,
    parameter_counts,
    plan_load,
    read_header,
    shard_files,
    validate,
)

DEFAULT_CONTEXT = 8192  # tokens a conversation can hold unless asked otherwise: the chat, `show`'s estimate

# (bytes per weight, bytes per row) once quantized at load: codes and block scales (e4m3 per 16 weights for
# NVFP4, fp32 per 64 for NF4), then the fp32 scale of each row.
QUANTIZED_BYTES = {"fp8": (1.0, 4), "nvfp4": (0.5625, 4), "int8": (1.0, 4), "nf4": (0.5625, 0)}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Fit:
    """Whether a model fits a device: what it needs against what is free there (None: unknown)."""

    device: str  # the GPU's name, or "CPU"
    needed: int
    free: int | None
    total: int | None

    @property
    def fits(self) -> bool:
        return self.free is None or self.needed <= self.free


@dataclass(frozen=True)
class WeightMemory:
    """How a loaded model holds its weights, for reports: the quantization in use and the bytes by format."""

    quantization: str
    by_format: dict[str, int]


@dataclass(frozen=True)
class CheckpointInfo:
    folder: Path
    config: TextConfig
    defaults: GenerationDefaults
    scheme: QuantScheme | None  # the checkpoint's own quantization; None for full precision
    tensors: dict[str, TensorInfo]  # every tensor in the headers
    plan: LoadPlan  # which tensors hold which weight, in what form
    vision: VisionConfig | None = None  # the vision tower, if the checkpoint has one

    @property
    def parameters(self) -> tuple[int, int]:
        """(total, active per token) parameters: the vision tower's count in the total only, since it runs once
        per image rather than for every token."""
        total, active = parameter_counts(self.config)
        return total + sum(math.prod(shape) for shape in self.plan.vision.values()), active

    @property
    def has_chat_template(self) -> bool:
        return (self.folder / "chat_template.jinja").exists() or (self.folder / "tokenizer.json").exists()

    @property
    def stored(self) -> dict[str, int]:
        """Bytes of the weights a load reads, by storage format: a quantized weight's scales count with it, under
        the checkpoint's precision; the rest by dtype."""
        quantized = {name for stored in self.plan.stored() if stored.form != "plain" for name in stored.expected}
        by_format: dict[str, int] = {}
        for name in self.plan.expected:
            if name not in self.tensors:
                continue
            info = self.tensors[name]
            if self.scheme is not None and name in quantized:
                key = self.scheme.precision
            else:
                key = dtype_name(SAFETENSORS_DTYPES[info.dtype])
            by_format[key] = by_format.get(key, 0) + info.nbytes
        return by_format

    def loaded(self, dtype: torch.dtype, quant: str | None = None, quant_dense: bool = False) -> dict[str, int]:
        """Bytes the loaded weights take, by format: the checkpoint's quantized weights as stored, the rest at
        `dtype`, or in the `quant` format where quantizing at load covers them."""
        by_format: dict[str, int] = {}

        def add(key: str, nbytes: float) -> None:
            by_format[key] = by_format.get(key, 0) + int(nbytes)

        def full_precision(module: str, shape: tuple[int, ...]) -> None:
            numel = math.prod(shape)
            if quant is not None and is_quantization_target(module, quant_dense):
                per_weight, per_row = QUANTIZED_BYTES[quant]
                add(quant, numel * per_weight + numel // shape[-1] * per_row)
            else:
                add(dtype_name(dtype), numel * dtype.itemsize)

        for name, shape in self.plan.plain.items():
            full_precision(module_name(name), shape)
        experts = ((m, s) for m, pieces in self.plan.experts.items() for expert in pieces for s in expert)
        for module, stored in [*self.plan.linears.items(), *experts]:
            if stored.form == "plain":
                full_precision(module, (stored.N, stored.K))
            else:
                add(stored.form, sum(self.tensors[name].nbytes for name in stored.expected))
        for shape in self.plan.vision.values():  # never quantized
            add(dtype_name(dtype), math.prod(shape) * dtype.itemsize)
        return by_format

    def quantization(self, quant: str | None = None) -> str:
        """The checkpoint's own quantization, the one applied while loading, or none (with the main dtype)."""
        if self.scheme is not None:
            return f"{self.scheme.precision} ({self.scheme.source})"
        if quant is not None:
            return f"{quant} (quantized while loading)"
        stored = self.stored
        return f"none ({max(stored, key=stored.__getitem__)})"

    @property
    def shared_copies(self) -> list[tuple[str, int]]:
        """(name, bytes) of every shared weight the checkpoint stores twice (under the decoder and the encoder)."""
        return [(name, info.nbytes) for name, info in self.tensors.items() if info.copy is not None]

    def copy_problem(self, name: str) -> str | None:
        """Whether the second copy of the shared weight `name` equals the first, byte for byte (loading compares
        samples): None, or the problem in one line."""
        try:
            check_copies({name: self.tensors[name]}, full=True)
        except CheckpointError as exc:
            return str(exc)
        return None

    def weight_memory(self, dtype: torch.dtype, quant: str | None = None, quant_dense: bool = False) -> WeightMemory:
        return WeightMemory(self.quantization(quant), self.loaded(dtype, quant, quant_dense))

    def memory_needed(
        self,
        dtype: torch.dtype,
        context: int = DEFAULT_CONTEXT,
        quant: str | None = None,
        quant_dense: bool = False,
        batch: int = 1,
    ) -> int:
        """Weights, the KV cache for `context` tokens (at most the model's own) and a step's largest buffers."""
        context = min(context, self.config.max_position_embeddings)
        weights = sum(self.loaded(dtype, quant, quant_dense).values())
        return weights + cache_bytes(self.config, batch, context, dtype) + step_workspace_bytes(self.config, batch)

    def fit(self, device: torch.device, dtype: torch.dtype, context: int = DEFAULT_CONTEXT) -> Fit:
        """Whether the model, as stored, fits `device` at `context` tokens (batch 1), by what is free there now."""
        name, total = device_memory(device)
        return Fit(name, self.memory_needed(dtype, context), available_bytes(device), total)


def inspect(folder: str | Path) -> CheckpointInfo:
    """Read a Hugging Face-format DiffusionGemma folder's configs and safetensors headers and check that the tensors
    are exactly those config.json implies (one `CheckpointError` line listing what is missing or wrong)."""
    folder = Path(folder)
    config, defaults = load_config(folder)
    scheme = detect_scheme(folder)
    tensors = read_header(shard_files(folder))
    vision = read_vision_config(folder, config.hidden_size, set(tensors))
    plan = plan_load(tensors, config, vision)
    validate(tensors, plan.expected)
    return CheckpointInfo(folder, config, defaults, scheme, tensors, plan, vision)
