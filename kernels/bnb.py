"""bitsandbytes int8 and NF4 weights, quantized at load for GPUs without FP8 (`--quant int8|nf4`).

Both are `QuantizedWeight`s, so the dispatcher's reference path (dequantize, then PyTorch) runs them unchanged.
bitsandbytes is optional: it is imported on first use, never at module import.

int8  q int8 [..., N, K]; absmax fp32 [..., N]; w = q · absmax[n] / 127 (LLM.int8 vector-wise, no outlier split).
NF4   packed uint8 [..., B·32]: each [N, K] matrix flattened row-major and zero-padded to B = ceil(N·K / 64) whole
      blocks, element 2j in the high nibble (bitsandbytes' order, the reverse of NVFP4's); absmax fp32 [..., B];
      w = NF4[code] · absmax[block].
"""

from __future__ import annotations

import logging
import math
from types import ModuleType

import torch
import torch.nn.functional as F

from .formats import QuantizedWeight

BNB_MISSING = "--quant int8/nf4 needs bitsandbytes: pip install 'dgemma[bnb]'"
NF4_BLOCKSIZE = 64


def _bnb_functional() -> ModuleType:
    """bitsandbytes.functional, or the ImportError the CLI reports in one line."""
    # Its CPU backend warns at import that the optional hub `kernels` package is missing: noise for us.
    noisy = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        import bitsandbytes.functional as bnb_functional
    except ImportError as exc:
        raise ImportError(BNB_MISSING) from exc
    finally:
        noisy.setLevel(level)
    return bnb_functional


class Int8Weight(QuantizedWeight):
    format_name = "int8"

    def __init__(self, q: torch.Tensor, absmax: torch.Tensor) -> None:
        super().__init__()
        if q.dtype != torch.int8 or absmax.shape != q.shape[:-1]:
            raise ValueError(f"int8 weight {list(q.shape)} {q.dtype} does not fit absmax {list(absmax.shape)}")
        self.register_buffer("q", q)
        self.register_buffer("absmax", absmax.float())

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        rows = self.q.reshape(-1, self.q.shape[-1])
        w = _bnb_functional().int8_vectorwise_dequant(rows, self.absmax.reshape(-1))
        return w.reshape(self.q.shape).to(dtype)


class Nf4Weight(QuantizedWeight):
    format_name = "nf4"

    def __init__(
        self, packed: torch.Tensor, absmax: torch.Tensor, shape: torch.Size, blocksize: int = NF4_BLOCKSIZE
    ) -> None:
        super().__init__()
        blocks = math.ceil(shape[-2] * shape[-1] / blocksize)
        if (
            packed.dtype != torch.uint8
            or packed.shape != (*shape[:-2], blocks * blocksize // 2)
            or absmax.shape != (*shape[:-2], blocks)
        ):
            raise ValueError(
                f"NF4 weight {list(shape)} does not fit packed {list(packed.shape)} {packed.dtype} "
                f"and absmax {list(absmax.shape)} at blocksize {blocksize}"
            )
        self.register_buffer("packed", packed)
        self.register_buffer("absmax", absmax.float())
        self._shape = torch.Size(shape)
        self.blocksize = blocksize

    @property
    def shape(self) -> torch.Size:
        return self._shape

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        bnb_functional = _bnb_functional()
        absmax = self.absmax.reshape(-1, self.absmax.shape[-1])  # a row per [N, K] matrix
        padded = torch.Size((absmax.shape[0], absmax.shape[1] * self.blocksize))
        state = bnb_functional.QuantState(
            absmax=absmax.flatten(), shape=padded, blocksize=self.blocksize, quant_type="nf4", dtype=dtype
        )
        # bnb's own packed layout is a column [bytes, 1]; a row [1, bytes] would come back transposed.
        w = bnb_functional.dequantize_4bit(self.packed.reshape(-1, 1), state)
        N, K = self._shape[-2:]
        return w[:, : N * K].reshape(self._shape)


def quantize_int8(weight: torch.Tensor) -> Int8Weight:
    """Round-to-nearest int8 with one absmax per output row; [..., N, K] rows are independent, so flatten them."""
    bnb_functional = _bnb_functional()
    # bnb's CUDA kernel takes only float16 (its Linear8bitLt casts the same way); the CPU path agrees with it.
    rows = weight.reshape(-1, weight.shape[-1]).to(torch.float16).contiguous()
    q, absmax, _ = bnb_functional.int8_vectorwise_quant(rows)
    return Int8Weight(q.reshape(weight.shape), absmax.reshape(weight.shape[:-1]))


def quantize_nf4(weight: torch.Tensor, blocksize: int = NF4_BLOCKSIZE) -> Nf4Weight:
    """NF4 with one fp32 absmax per `blocksize` consecutive elements of each [N, K] matrix (bnb's Linear4bit)."""
    bnb_functional = _bnb_functional()
    N, K = weight.shape[-2:]
    # Pad every matrix to whole blocks so that no block spans two experts: one bnb call then quantizes them all.
    matrices = F.pad(weight.reshape(-1, N * K), (0, -(N * K) % blocksize)).contiguous()
    packed, state = bnb_functional.quantize_4bit(matrices, blocksize=blocksize, quant_type="nf4")
    lead = weight.shape[:-2]
    return Nf4Weight(packed.reshape(*lead, -1), state.absmax.reshape(*lead, -1), weight.shape, blocksize)
