"""Quantized weights in memory, and their plain-PyTorch reference arithmetic.

Every on-disk dialect is normalised at load into one layout per precision; this module defines those layouts,
quantizes full-precision weights into them (round to nearest, as ModelOpt and llm-compressor do) and
dequantizes them back. Weights are [..., N, K] (out, in) as nn.Linear stores them; leading dims are experts.

FP8    q float8_e4m3fn [..., N, K]; scale fp32 [..., N, ceil(K / group)]; w = q · scale[n, k // group].
       group = K for per-channel (and per-tensor, broadcast) checkpoints, 128 for block-quantized ones.
NVFP4  packed uint8 [..., N, K/2], element 2j in the low nibble; block_scale float8_e4m3fn [..., N, K/16];
       global_scale fp32 [..., N]; w = E2M1[nibble] · block_scale[n, k // 16] · global_scale[n].

The weights are modules holding buffers, so `.to(device)` and `named_buffers()` see them like any parameter.
The quantizers work through a weight in cache-sized row chunks with a few integer tricks on float bits: the bytes
of the plain whole-tensor arithmetic (tests/kernels/test_formats.py keeps it as their reference), NVFP4's several
times faster on the CPU.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import NamedTuple

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
    """Codes of the nearest E2M1 values to x (|x| <= 6 expected: larger gives code 7), ties to the even code as the
    hardware does; bit 3 is set for every x < 0, even one that rounds to 0 (code 8, E2M1's -0), but not for -0.0."""
    magnitude = x.abs().to(torch.float64 if x.dtype == torch.float64 else torch.float32).clamp_(max=FP4_MAX)
    codes = _e2m1_magnitudes_(magnitude, torch.empty_like(magnitude, dtype=_FLOAT_BITS[magnitude.dtype].int_dtype))
    return codes.to(torch.uint8) | ((x < 0).to(torch.uint8) << 3)


class _FloatBits(NamedTuple):
    int_dtype: torch.dtype  # the integer type of the same width
    one: int  # the bits of 1.0
    exponent: int  # the exponent field's mask
    mantissa: int  # the mantissa's width


_FLOAT_BITS = {
    torch.float32: _FloatBits(torch.int32, 0x3F800000, 0x7F800000, 23),
    torch.float64: _FloatBits(torch.int64, 0x3FF0000000000000, 0x7FF0000000000000, 52),
}


def _e2m1_magnitudes_(a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """E2M1 codes of `a` (float32 or float64, 0 <= a < 7) in the low byte of `out` (integers as wide as a), which
    is returned; `a` is overwritten.

    The FPU rounds: with E = max(floor(log2 a), 0) read off a's exponent field, M = 2^(E+22) (2^(E+51) in float64)
    has E2M1's step in a's binade (1/2 below 2, 1 below 4, 2 above) for its ulp, so the one addition a + M rounds a
    onto E2M1's grid, ties to even. M goes in 2 ulps heavy (an even number, so ties still round to even codes): the
    sum's bits end in 2 + n, n = a / step rounded, and 2^E's bits >> 22 (>> 51) in 254 + 2E (mod 256); added, their
    low byte is the code, n + 2E. Five passes, where comparing with each midpoint or scaling by ldexp took many more."""
    layout = _FLOAT_BITS[a.dtype]
    bits = a.view(layout.int_dtype)
    torch.clamp(bits, min=layout.one, out=out).bitwise_and_(layout.exponent)  # 2^E; for a >= 0 bits sort as floats
    a.add_(out.view(a.dtype), alpha=2.0 ** (layout.mantissa - 1) + 1)  # a + M + 2 ulps, rounded to the grid
    return out.bitwise_right_shift_(layout.mantissa - 1).add_(bits)


# -- quantization (round to nearest) -------------------------------------------------------------------------
#
# Both quantizers make a few passes over the weight in row chunks, reusing the same scratch (one allocation per
# call) from chunk to chunk. On the CPU the chunks are sized so a thread's share of the float32 / int32 scratch stays
# in its L2 cache: every pass then runs at cache speed, where full-size temporaries streamed through memory (and were
# freshly allocated) at several times the cost. Elsewhere one chunk covers the whole weight.

CHUNK_ELEMENTS_PER_THREAD = 1 << 17  # ~12 bytes of scratch an element: 1.5 MB of a 2 MB L2
ABS_MAX_CHUNK_ELEMENTS_PER_THREAD = 1 << 18  # NVFP4's first pass only needs 2 bytes an element: fewer, longer calls
_SIGNED_INT = {2: torch.int16, 4: torch.int32}  # 16- and 32-bit floats viewed as integers


def _quantizable(weight: torch.Tensor) -> torch.Tensor:
    """16- and 32-bit floats as they are, anything else as float32, which both quantizers compute in anyway
    (rounding is monotone, so maxima agree whether taken before or after the conversion)."""
    return weight if weight.is_floating_point() and weight.element_size() in _SIGNED_INT else weight.float()


def _chunk_rows(x: torch.Tensor, elements_per_thread: int) -> int:
    """Rows of a [rows, K] weight per chunk: all of them off the CPU, at least 1."""
    rows, K = x.shape
    if x.device.type != "cpu":
        return max(rows, 1)
    return max(1, min(rows, elements_per_thread * torch.get_num_threads() // max(K, 1)))


def _chunks(chunk: int, *tensors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """The tensors' matching row chunks (a split apiece costs less than slicing each chunk)."""
    return zip(*(t.split(chunk) for t in tensors), strict=True)


def _scratch(device: torch.device, *specs: tuple[tuple[int, ...], torch.dtype]) -> list[torch.Tensor]:
    """Empty tensors of these shapes and dtypes, carved back to back (64-byte aligned) from a single allocation.

    One block freed per call, not a dozen: glibc returns the top of its heap to the OS once more than twice the
    largest block it has freed sits there, and a dozen buffers would then be faulted back in, page by page, on
    every call (30% more time, measured)."""
    sizes = [math.prod(shape) * dtype.itemsize for shape, dtype in specs]
    starts = [0, *itertools.accumulate(-(-size // 64) * 64 for size in sizes)]
    buffer = torch.empty(starts[-1], dtype=torch.uint8, device=device)
    return [
        buffer[start : start + size].view(dtype).view(shape)
        for (shape, dtype), start, size in zip(specs, starts[:-1], sizes, strict=True)
    ]


def _abs_max_bits(bits: torch.Tensor, group: int, out: torch.Tensor, scratch: torch.Tensor) -> None:
    """Maxima of |x| over each `group` of `bits`' rows (floats [n, K] viewed as integers, the last group maybe short)
    into `out` [n, ceil(K / group)], still as bits: with the sign bit cleared integer order is float order, and the
    integer reductions run 2-4x faster than the float ones."""
    K = bits.shape[-1]
    full = K - K % group
    torch.bitwise_and(bits, torch.iinfo(bits.dtype).max, out=scratch)
    torch.amax(scratch[:, :full].unflatten(-1, (full // group, group)), -1, out=out[:, : full // group])
    if full < K:
        torch.amax(scratch[:, full:], -1, keepdim=True, out=out[:, full // group :])


@torch.no_grad()
def quantize_fp8(weight: torch.Tensor, group: int | None = None) -> Fp8Weight:
    """Per-row (group=None: one scale per output row) or per-K-group absmax scaling to e4m3."""
    *lead, K = weight.shape
    group = group or K
    groups, full = math.ceil(K / group), K - K % group
    x = _quantizable(weight).reshape(-1, K)
    bits = x.view(_SIGNED_INT[x.element_size()])
    rows, chunk = x.shape[0], _chunk_rows(x, CHUNK_ELEMENTS_PER_THREAD)
    scale = torch.empty(rows, groups, device=x.device)
    q = torch.empty(rows, K, dtype=torch.float8_e4m3fn, device=x.device)
    amax, scaled, scratch = _scratch(
        x.device, ((rows, groups), bits.dtype), ((chunk, K), torch.float32), ((chunk, K), bits.dtype)
    )
    for x_rows, bits_rows, amax_rows, s, q_rows in _chunks(chunk, x, bits, amax, scale, q):
        y = scaled[: len(x_rows)]
        _abs_max_bits(bits_rows, group, amax_rows, scratch[: len(x_rows)])
        # As the whole-weight expression would: the maxima (exact in any dtype) / 448 in float32, then a true
        # float32 division of each element and the cast.
        torch.div(amax_rows.view(x.dtype).float(), FP8_MAX, out=s).clamp_(min=torch.finfo(torch.float32).tiny)
        y.copy_(x_rows)
        y[:, :full].unflatten(-1, (full // group, group)).div_(s[:, : full // group, None])
        if full < K:
            y[:, full:].div_(s[:, -1:])
        q_rows.copy_(y)
    return Fp8Weight(q.view(*lead, K), scale.view(*lead, groups), group)


def _global_scale(amax: torch.Tensor) -> torch.Tensor:
    """ModelOpt's per-tensor multiplier amax / (6 · 448), from each [N, K] matrix's largest |weight|."""
    return (amax.float() / (FP4_MAX * FP8_MAX)).clamp(min=torch.finfo(torch.float32).tiny)


def _e4m3_values(codes: torch.Tensor, out: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """float32 values of e4m3 codes into `out`, looked up (`index`: int32 scratch of the same shape): the elementwise
    cast runs at ~4 ns an element on the CPU."""
    table = torch.arange(256, dtype=torch.uint8, device=codes.device).view(torch.float8_e4m3fn).float()
    flat_index = index.view(-1).copy_(codes.view(torch.uint8).view(-1))
    return torch.index_select(table, 0, flat_index, out=out.view(-1)).view_as(out)


def _signs_from_input(x: torch.Tensor, step: torch.Tensor) -> bool:
    """Whether x / step is negative exactly where x is negative and not -0, so that the signs can come from x's bits
    in 16-bit passes: for 16-bit floats over positive steps too small for a nonzero x (at least the smallest
    subnormal) to underflow to 0, i.e. below 2^150 times that subnormal."""
    if x.element_size() != 2 or step.numel() == 0:
        return False
    info = torch.finfo(x.dtype)
    low, high = torch.aminmax(step)
    return bool(low > 0) and bool(high < info.smallest_normal * info.eps * 2.0**150)


@torch.no_grad()
def quantize_nvfp4(weight: torch.Tensor, global_scale: torch.Tensor | None = None) -> Nvfp4Weight:
    """Two-level NVFP4: e4m3 scale per 16 elements of a row, under a float32 multiplier per tensor (ModelOpt).

    `global_scale` ([...], one per leading index) defaults to amax / (6 · 448) of each [N, K] matrix. The codes are
    the nearest E2M1 values (as `round_to_e2m1`) to the float32 quotients x / step, step = block_scale · global_scale.
    """
    *lead, N, K = weight.shape
    if K % NVFP4_GROUP:
        raise ValueError(f"NVFP4 quantizes rows of a multiple of {NVFP4_GROUP} elements, not {K}")
    x = _quantizable(weight).reshape(-1, K)
    bits = x.view(_SIGNED_INT[x.element_size()])
    rows, blocks, chunk = x.shape[0], K // NVFP4_GROUP, _chunk_rows(x, CHUNK_ELEMENTS_PER_THREAD)
    first_chunk = _chunk_rows(x, ABS_MAX_CHUNK_ELEMENTS_PER_THREAD)
    # The first pass's chunk; per block: the maxima's bits and floats, a spare float32 (the block scales before the
    # cast, then each block's largest quotient), the steps and their lookup's index; then the second pass's chunk.
    scratch, amax, block_amax, spare, step, index, *chunk_scratch = _scratch(
        x.device,
        ((first_chunk, K), bits.dtype),
        *[((rows, blocks), dtype) for dtype in (bits.dtype, torch.float32, torch.float32, torch.float32, torch.int32)],
        *[((chunk, K), dtype) for dtype in (torch.float32, torch.int32, torch.int16, torch.int16)],
    )
    for bits_rows, amax_rows in _chunks(first_chunk, bits, amax):  # all the block maxima first, for the global scale
        _abs_max_bits(bits_rows, NVFP4_GROUP, amax_rows, scratch[: len(bits_rows)])
    block_amax = block_amax.copy_(amax.view(x.dtype)).view(*lead, N, blocks)
    g = _global_scale(block_amax.amax(dim=(-2, -1))) if global_scale is None else global_scale.float()
    g_rows = g[..., None, None]
    spare = spare.view(*lead, N, blocks)
    block_scale = torch.div(block_amax, FP4_MAX * g_rows, out=spare).clamp_(FP8_SCALE_MIN, FP8_MAX)
    block_scale = block_scale.to(torch.float8_e4m3fn)
    step = _e4m3_values(block_scale, step.view(*lead, N, blocks), index).mul_(g_rows)
    # Quotients pass 6 only where a block scale was rounded down a lot or clamped; below 7 they round to code 7
    # without the clamp to 6: a pass saved on most weights.
    largest = torch.div(block_amax, step, out=spare).abs_()
    clamp = largest.numel() > 0 and not bool(largest.amax() < 7)
    packed = torch.empty(rows, K // 2, dtype=torch.uint8, device=x.device)
    signs_from_input = _signs_from_input(x, step)
    _nvfp4_codes(x, step.view(rows, blocks, 1), packed, signs_from_input, clamp, chunk_scratch)
    global_rows = g.unsqueeze(-1).expand(*weight.shape[:-1]).contiguous()
    return Nvfp4Weight(packed.view(*lead, N, K // 2), block_scale, global_rows)


def _nvfp4_codes(
    x: torch.Tensor,
    step: torch.Tensor,
    packed: torch.Tensor,
    signs_from_input: bool,
    clamp: bool,
    scratch: list[torch.Tensor],
) -> None:
    """Packed codes of x / step (x [rows, K], step [rows, K / 16, 1]) into `packed` [rows, K / 2], a chunk of rows at
    a time (`scratch`: float32, int32, int16 and int16 [chunk, K]); with `clamp`, quotients over 6 count as 6."""
    quotients, work, codes, signs = scratch  # work: 2^E, then the codes, then the packed pairs
    chunk, K = codes.shape
    bits = x.view(_SIGNED_INT[x.element_size()])
    info = torch.iinfo(bits.dtype)
    # As 0-d tensors, the masks spare a conversion per call.
    magnitude, sign_bit = (torch.tensor(v, dtype=bits.dtype) for v in (info.max, info.min))
    for x_rows, bits_rows, step_rows, packed_rows in _chunks(chunk, x, bits, step, packed):
        n = len(x_rows)
        a, v, c, s = (quotients, work, codes, signs) if n == chunk else (quotients[:n], work[:n], codes[:n], signs[:n])
        if signs_from_input:  # |x| / step; x < 0 but not -0 (0x8000) <=> (bits ^ sign bit) >= 1
            torch.bitwise_and(bits_rows, magnitude, out=c)
            torch.bitwise_xor(bits_rows, sign_bit, out=s).clamp_(0, 1)
            a.copy_(c.view(x.dtype)).view(n, K // NVFP4_GROUP, NVFP4_GROUP).div_(step_rows)
        else:  # x / step (NaN, from a NaN or 0 / 0, as 0), then the same test on its bits, and its magnitude
            a.copy_(x_rows).view(n, K // NVFP4_GROUP, NVFP4_GROUP).div_(step_rows)
            a.nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf)
            a_bits = a.view(torch.int32).bitwise_xor_(-(2**31))
            s.copy_(torch.clamp(a_bits, 0, 1, out=v))
            a_bits.bitwise_and_(2**31 - 1)
        if clamp:
            a.clamp_(max=FP4_MAX)
        c.copy_(_e2m1_magnitudes_(a, v)).add_(s, alpha=8)  # the int16 copy keeps 256 + code; the sign is bit 3
        # Read as int32 (little-endian), a pair is w = (256 + c0) + 2^16 (256 + c1): the low byte of w + (w >> 12)
        # is c0 + 16 c1, which the copy to uint8 keeps.
        pairs, shifted = c.view(torch.int32), v.view(-1)[: n * K // 2].view(n, K // 2)
        packed_rows.copy_(torch.bitwise_right_shift(pairs, 12, out=shifted).add_(pairs))
