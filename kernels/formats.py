"""Quantized weights in memory, and their plain-PyTorch reference arithmetic.

Every on-disk dialect is normalised at load into one layout per precision; this module defines those layouts,
quantizes full-precision weights into them (round to nearest, as ModelOpt and llm-compressor do) and
dequantizes them back. Weights are [..., N, K] (out, in) as nn.Linear stores them; leading dims are experts.

FP8    q float8_e4m3fn [..., N, K]; scale fp32 [..., N, ceil(K / group)]; w = q · scale[n, k // group].
       group = K for per-channel (and per-tensor, broadcast) checkpoints, 128 for block-quantized ones.
NVFP4  packed uint8 [..., N, K/2], element 2j in the low nibble; block_scale float8_e4m3fn [..., N, K/16];
       global_scale fp32 [..., N]; w = E2M1[nibble] · block_scale[n, k // 16] · global_scale[n].

The weights are modules holding buffers, so `.to(device)` and `named_buffers()` see them like any parameter.
"""

from __future__ import annotations

import math

import torch
from torch import nn

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # code 0..7; bit 3 is the sign
FP8_MAX = 448.0
FP4_MAX = 6.0
NVFP4_GROUP = 16
FP8_SCALE_MIN = 2.0**-9  # the smallest e4m3 subnormal: block scales are clamped to it, never to zero


def e2m1_table(device: torch.device | str = "cpu") -> torch.Tensor:
    """All 16 codes as float32: [0, .5, 1, 1.5, 2, 3, 4, 6, -0, -.5, ..., -6]."""
    magnitudes = torch.tensor(E2M1_VALUES, device=device)
    return torch.cat([magnitudes, -magnitudes])


class QuantizedWeight(nn.Module):
    """A [..., N, K] weight held in a narrow format; `dequantize()` is the reference every kernel must match."""

    format_name: str

    @property
    def shape(self) -> torch.Size:
        raise NotImplementedError

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """Follow device moves but never dtype casts: `model.to(torch.bfloat16)` must not turn codes and scales
        into bf16 values. The target device is read off `fn` applied to an empty slice."""
        for name, buffer in self._buffers.items():
            if buffer is not None:
                self._buffers[name] = buffer.to(fn(buffer[:0]).device)
        return self

    def extra_repr(self) -> str:
        return f"{self.format_name}, shape={list(self.shape)}"


class Fp8Weight(QuantizedWeight):
    format_name = "fp8"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, group: int) -> None:
        super().__init__()
        if q.dtype != torch.float8_e4m3fn or scale.shape != (*q.shape[:-1], math.ceil(q.shape[-1] / group)):
            raise ValueError(f"FP8 weight {list(q.shape)} {q.dtype} does not fit scale {list(scale.shape)}")
        self.register_buffer("q", q)
        self.register_buffer("scale", scale.float())
        self.group = group

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        scale = self.scale.repeat_interleave(self.group, dim=-1)[..., : self.q.shape[-1]]
        return (self.q.float() * scale).to(dtype)


class Nvfp4Weight(QuantizedWeight):
    format_name = "nvfp4"

    def __init__(self, packed: torch.Tensor, block_scale: torch.Tensor, global_scale: torch.Tensor) -> None:
        super().__init__()
        half_k = packed.shape[-1]
        if (
            packed.dtype != torch.uint8
            or block_scale.dtype != torch.float8_e4m3fn
            or block_scale.shape != (*packed.shape[:-1], 2 * half_k // NVFP4_GROUP)
            or global_scale.shape != packed.shape[:-1]
        ):
            raise ValueError(
                f"NVFP4 weight {list(packed.shape)} does not fit block scale {list(block_scale.shape)} "
                f"and global scale {list(global_scale.shape)}"
            )
        self.register_buffer("packed", packed)
        self.register_buffer("block_scale", block_scale)
        self.register_buffer("global_scale", global_scale.float())

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.packed.shape[:-1], 2 * self.packed.shape[-1]))

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        values = e2m1_table(self.packed.device)[unpack_nibbles(self.packed).long()]
        scale = self.block_scale.float() * self.global_scale.unsqueeze(-1)
        return (values.unflatten(-1, (-1, NVFP4_GROUP)) * scale.unsqueeze(-1)).flatten(-2).to(dtype)


# -- packing -------------------------------------------------------------------------------------------------


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K/2] -> codes uint8 [..., K]; element 2j is the low nibble of byte j."""
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """codes uint8 [..., K] (K even) -> uint8 [..., K/2], the inverse of `unpack_nibbles`."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def round_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Codes of the nearest E2M1 values to x (|x| <= 6 expected), ties to the even code as the hardware does.

    E2M1 steps by 0.5 below 2, by 1 below 4, by 2 up to 6: scaled by 2, 1 or 1/2 (exact), each range rounds half to
    even on the integers, and its codes follow those of the range below (a few passes, where searching the
    midpoints took many more)."""
    a = x.abs()
    scale = (a >= 2).to(torch.uint8) + (a >= 4).to(torch.uint8)  # which range: 0, 1 or 2
    steps = torch.ldexp(a, 1 - scale.to(torch.int32)).round_()
    code = (steps.to(torch.uint8) + 2 * scale).clamp_(max=7)
    return code | ((x < 0).to(torch.uint8) << 3)


# -- quantization (round to nearest) -------------------------------------------------------------------------


def quantize_fp8(weight: torch.Tensor, group: int | None = None) -> Fp8Weight:
    """Per-row (group=None: one scale per output row) or per-K-group absmax scaling to e4m3."""
    K = weight.shape[-1]
    group = group or K
    padded = torch.nn.functional.pad(weight, (0, -K % group)) if K % group else weight
    blocks = padded.unflatten(-1, (-1, group))
    # Maxima of |w| in the weight's own dtype (exact), then one float32 copy divided in place: fewer passes.
    scale = (blocks.abs().amax(-1).float() / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    scaled = blocks.to(torch.float32, copy=True).div_(scale.unsqueeze(-1))
    return Fp8Weight(scaled.flatten(-2)[..., :K].to(torch.float8_e4m3fn), scale, group)


def nvfp4_global_scale(weight: torch.Tensor) -> torch.Tensor:
    """ModelOpt's per-tensor multiplier amax / (6 · 448), over the last two dims (one per expert)."""
    amax = weight.abs().amax(dim=(-2, -1)).float()  # exact in the weight's own dtype
    return (amax / (FP4_MAX * FP8_MAX)).clamp(min=torch.finfo(torch.float32).tiny)


def quantize_nvfp4(weight: torch.Tensor, global_scale: torch.Tensor | None = None) -> Nvfp4Weight:
    """Two-level NVFP4: e4m3 scale per 16 elements of a row, under a float32 multiplier per tensor (ModelOpt).

    `global_scale` ([...], one per leading index) defaults to amax / (6 · 448) of each [N, K] matrix.
    """
    g = nvfp4_global_scale(weight) if global_scale is None else global_scale.float()
    blocks = weight.to(torch.float32, copy=True).unflatten(-1, (-1, NVFP4_GROUP))  # divided in place below
    block_amax = blocks.abs().amax(-1)
    g_rows = g[..., None, None]
    block_scale = (block_amax / (FP4_MAX * g_rows)).clamp(FP8_SCALE_MIN, FP8_MAX).to(torch.float8_e4m3fn)
    step = block_scale.float() * g_rows
    codes = round_to_e2m1(blocks.div_(step.unsqueeze(-1)).clamp_(-FP4_MAX, FP4_MAX)).flatten(-2)
    global_rows = g.unsqueeze(-1).expand(*weight.shape[:-1]).contiguous()
    return Nvfp4Weight(pack_nibbles(codes), block_scale, global_rows)
