"""Quantized checkpoints: which dialect a folder is in, and how each weight is stored in it.

Dialects (quant-formats notes §3–4): compressed-tensors `float-quantized` (FP8 per tensor, per channel or in
128×128 blocks) and `nvfp4-pack-quantized`; ModelOpt FP8 and NVFP4 (config.json `quant_method: modelopt`, or
hf_quant_config.json); `quant_method: fp8` block checkpoints (`weight_scale_inv`). Every form is normalised into
the layouts of `dgemma_kernels.formats`. dgemma computes with bf16 activations (W8A16, W4A16), so activation
scales (`input_scale`, `input_global_scale`, `k_scale`, `v_scale`) are read past.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from dgemma_kernels import Fp8Weight, Nvfp4Weight, QuantizedWeight, quantize_fp8, quantize_nvfp4
from torch import nn

from .config import read_json
from .errors import CheckpointError, OptionError, UnsupportedModelError

FP8_BLOCK = 128
FLOAT_DTYPES = ("BF16", "F16", "F32")
ACTIVATION_SCALES = ("input_scale", "input_global_scale", "k_scale", "v_scale", "q_scale", "output_scale")
COMPRESSED_TENSORS_FORMATS = {"float-quantized": "fp8", "nvfp4-pack-quantized": "nvfp4"}
MODELOPT_ALGOS = {"FP8": "fp8", "FP8_PER_CHANNEL_PER_TOKEN": "fp8", "FP8_PB_WO": "fp8", "NVFP4": "nvfp4"}
MODELOPT_ALGOS["W4A16_NVFP4"] = "nvfp4"


@dataclass(frozen=True)
class QuantScheme:
    precision: str  # "fp8" or "nvfp4": the layout the checkpoint's quantized weights are normalised into
    source: str  # what the checkpoint declares, for messages and `dgemma show`

    @property
    def inverted_global_scale(self) -> bool:
        # compressed-tensors stores 448·6/amax, ModelOpt its inverse amax/(6·448) (§3.4).
        return self.source.startswith("compressed-tensors")


def detect_scheme(folder: Path) -> QuantScheme | None:
    """The folder's quantization, None for a plain bf16/fp16/fp32 checkpoint; one clear error if unsupported."""
    declared = read_json(folder / "config.json").get("quantization_config")
    hf_quant = folder / "hf_quant_config.json"
    if not declared and hf_quant.exists():
        declared = {"quant_method": "modelopt", **(read_json(hf_quant).get("quantization") or {})}
    if not declared:
        return None
    method = str(declared.get("quant_method", "")).lower()
    if method == "compressed-tensors":
        fmt = str(declared.get("format", ""))
        if fmt == "dense":
            return None
        if fmt in COMPRESSED_TENSORS_FORMATS:
            return QuantScheme(COMPRESSED_TENSORS_FORMATS[fmt], f"compressed-tensors {fmt}")
        found = f"compressed-tensors format {fmt!r}"
    elif method == "modelopt":
        algo = str(declared.get("quant_algo", ""))
        if algo in MODELOPT_ALGOS:
            return QuantScheme(MODELOPT_ALGOS[algo], f"modelopt {algo}")
        found = f"ModelOpt quant_algo {algo!r}"
    elif method == "fp8":
        return QuantScheme("fp8", "fp8 block (weight_scale_inv)")
    else:
        found = f"quant_method {method or 'unknown'!r}"
    raise UnsupportedModelError(
        f"unsupported quantization: {found}; dgemma loads bf16, FP8 (compressed-tensors, ModelOpt, fp8 block) "
        "and NVFP4 (compressed-tensors, ModelOpt) checkpoints"
    )


# safetensors dtype tags -> torch dtypes
SAFETENSORS_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    path: Path
    shape: tuple[int, ...]
    dtype: str  # the safetensors tag: "BF16", "F8_E4M3", "U8", ...
    name: str = ""  # its name in the file, where that differs from the name it is found by (encoder prefix)
    offset: int = 0  # where its bytes start in the file
    copy: TensorInfo | None = None  # the same tensor stored again under the other shared prefix

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * SAFETENSORS_DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class StoredLinear:
    """How one [N, K] weight (checkpoint prefix `base`) is stored: `form` is "plain", "fp8" or "nvfp4"."""

    base: str
    form: str
    N: int
    K: int
    names: dict[str, str]  # role -> checkpoint tensor name
    expected: dict[str, tuple[int, ...]]  # checkpoint name -> shape it must have
    scale_layout: str = ""  # FP8 only: "tensor", "row" or "block"


def fp8_scale_layout(shape: tuple[int, ...], N: int, K: int) -> str | None:
    """ "tensor", "row" or "block" (128×128): which FP8 scale form a shape is, None if it fits none."""
    if math.prod(shape) == 1:
        return "tensor"
    if shape in ((N,), (N, 1)):
        return "row"
    blocks = (math.ceil(N / FP8_BLOCK), math.ceil(K / FP8_BLOCK))
    if shape in (blocks, (blocks[0], 1, blocks[1], 1)):  # ModelOpt FP8_PB_WO keeps singleton axes
        return "block"
    return None


def stored_linear(found: dict[str, TensorInfo], base: str, N: int, K: int) -> StoredLinear:
    """Find the form a weight is stored in; `expected` then names exactly the tensors that form needs."""
    weight = found.get(f"{base}.weight")
    if f"{base}.weight_packed" in found:  # compressed-tensors NVFP4
        names = {"packed": "weight_packed", "block_scale": "weight_scale", "global_scale": "weight_global_scale"}
        return _nvfp4(base, names, found, N, K)
    if weight is not None and weight.dtype == "U8":  # ModelOpt NVFP4
        names = {"packed": "weight", "block_scale": "weight_scale", "global_scale": "weight_scale_2"}
        return _nvfp4(base, names, found, N, K)
    if weight is not None and weight.dtype == "F8_E4M3":
        scale = "weight_scale_inv" if f"{base}.weight_scale_inv" in found else "weight_scale"
        info = found.get(f"{base}.{scale}")
        layout = fp8_scale_layout(info.shape, N, K) if info else None
        scale_shape = info.shape if layout else (N, 1)  # a bad or missing scale is reported as per-channel
        expected = {f"{base}.weight": (N, K), f"{base}.{scale}": scale_shape}
        roles = {"q": f"{base}.weight", "scale": f"{base}.{scale}"}
        return StoredLinear(base, "fp8", N, K, roles, expected, layout or "row")
    return StoredLinear(base, "plain", N, K, {"weight": f"{base}.weight"}, {f"{base}.weight": (N, K)})


def _nvfp4(base: str, roles: dict[str, str], found: dict[str, TensorInfo], N: int, K: int) -> StoredLinear:
    names = {role: f"{base}.{suffix}" for role, suffix in roles.items()}
    global_info = found.get(names["global_scale"])
    global_shape = global_info.shape if global_info and math.prod(global_info.shape) == 1 else ()
    expected = {names["packed"]: (N, K // 2), names["block_scale"]: (N, K // 16), names["global_scale"]: global_shape}
    return StoredLinear(base, "nvfp4", N, K, names, expected)


def is_activation_scale(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ACTIVATION_SCALES


FP8_ROWS_PER_SCALE = {"tensor": None, "row": 1, "block": FP8_BLOCK}  # None: one scale for all N rows


def build_linear(
    stored: StoredLinear, read: Callable[[str], torch.Tensor], scheme: QuantScheme | None, dtype: torch.dtype
) -> torch.Tensor | QuantizedWeight:
    """The weight as the model holds it: a [N, K] tensor in `dtype`, or a quantized weight module.

    `read(name)` returns a checkpoint tensor already on the target device.
    """
    return assemble([stored], {role: read(name) for role, name in stored.names.items()}, (), scheme, dtype)


def assemble(
    pieces: list[StoredLinear],
    roles: dict[str, torch.Tensor],
    lead: tuple[int, ...],
    scheme: QuantScheme | None,
    dtype: torch.dtype,
) -> torch.Tensor | QuantizedWeight:
    """One [*lead, ΣN_i, K] weight from `pieces`, the [N_i, K] parts stored apart (gate, then up), for each index
    in `lead` (the experts, or none for a single linear).

    `roles[role]` holds that role's checkpoint tensors (`StoredLinear.names`) for every expert and piece in that
    order, one after another, in any shape: weight bytes are kept as they are, and scales are repeated down the
    rows they cover.
    """
    first, N, K = pieces[0], sum(piece.N for piece in pieces), pieces[0].K
    if first.form == "plain":
        return roles["weight"].view(*lead, N, K).to(dtype)
    if first.form == "fp8":
        per_scale = FP8_ROWS_PER_SCALE[first.scale_layout]
        scale = _scale_per_row(pieces, roles["scale"].float(), lead, per_scale)
        return Fp8Weight(roles["q"].view(*lead, N, K), scale, FP8_BLOCK if per_scale == FP8_BLOCK else K)
    block_scale = roles["block_scale"]
    if block_scale.dtype != torch.float8_e4m3fn:
        raise CheckpointError(f"{first.names['block_scale']}: NVFP4 block scales must be F8_E4M3")
    global_scale = roles["global_scale"].float()
    if scheme is not None and scheme.inverted_global_scale:
        global_scale = 1.0 / global_scale
    return Nvfp4Weight(
        roles["packed"].view(*lead, N, K // 2),
        block_scale.view(*lead, N, K // 16),
        _scale_per_row(pieces, global_scale, lead, None).squeeze(-1),
    )


def _scale_per_row(
    pieces: list[StoredLinear], scales: torch.Tensor, lead: tuple[int, ...], rows_per_scale: int | None
) -> torch.Tensor:
    """Scales stored per piece, one after another (each piece's: one per `rows_per_scale` rows, or a single one
    with None) -> [*lead, ΣN_i, columns], the scales of each weight row."""
    index, start = [], 0
    for piece in pieces:
        step = rows_per_scale or piece.N
        index.append(start + torch.arange(piece.N, device=scales.device) // step)
        start += math.ceil(piece.N / step)
    return scales.reshape(*lead, start, -1).index_select(len(lead), torch.cat(index))


QUANTIZE_AT_LOAD = ("fp8", "nvfp4", "int8", "nf4")


def quantize_at_load(precision: str, dense: bool) -> Callable[[str, torch.Tensor], torch.Tensor | QuantizedWeight]:
    """A `load_state` transform: experts always, attention and dense MLP when `dense`, into `precision`.

    Router, embeddings, norms and self-conditioning stay in full precision, as in the published checkpoints.
    """
    if precision not in QUANTIZE_AT_LOAD:
        raise OptionError(f"unknown quantization {precision!r}; choose one of {', '.join(QUANTIZE_AT_LOAD)}")
    quantize = _quantizer(precision)

    def transform(name: str, weight: torch.Tensor) -> torch.Tensor | QuantizedWeight:
        return quantize(weight) if is_quantization_target(name, dense) else weight

    return transform


def is_quantization_target(name: str, dense: bool) -> bool:
    """A weight (by module name) that quantization covers: experts always, attention and the dense MLP with
    `dense`; never the router, embeddings, norms or self-conditioning."""
    return ".experts." in name or (dense and (".self_attn." in name or ".mlp." in name))


def _quantizer(precision: str) -> Callable[[torch.Tensor], QuantizedWeight]:
    if precision == "fp8":
        return quantize_fp8
    if precision == "nvfp4":
        return quantize_nvfp4
    if importlib.util.find_spec("bitsandbytes") is None:
        raise OptionError(f"--quant {precision} needs bitsandbytes: pip install 'dgemma[bnb]'")
    from dgemma_kernels import bnb

    return bnb.quantize_int8 if precision == "int8" else bnb.quantize_nf4


def install_quantized(model: nn.Module, state: dict[str, torch.Tensor | QuantizedWeight]) -> dict[str, torch.Tensor]:
    """Put each quantized weight in place of the parameter it replaces; returns the state dict that remains,
    the quantized weights' buffers included, for `load_state_dict(strict=True)`."""
    plain: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if isinstance(value, QuantizedWeight):
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            delattr(owner, attr)
            setattr(owner, attr, value)
            plain.update({f"{name}.{key}": buffer for key, buffer in value.named_buffers()})
        else:
            plain[name] = value
    return plain
