"""The grouped product as one Triton kernel family that dequantizes weights inside its K loop.

Structure of vLLM's fused_moe: a program computes one (M-tile, N-tile) of the output; every M-tile lies inside
one expert's rows, so it streams that expert's weight tile, decodes it in registers and feeds `tl.dot` (fp32
accumulator). NVFP4 bytes are decoded with integer bit arithmetic. FP8 weights are converted by the hardware where
it has FP8 (compute capability 8.9+); elsewhere, and in the Triton interpreter on the CPU, by the same bit
arithmetic.

Decoded tiles are exact in bf16/fp16 (an e4m3 value, or an E2M1 value times an e4m3 block scale, has at most six
significant bits), so every fp32 factor that does not fit that (FP8 scales, the NVFP4 global scale) is applied
to the fp32 accumulator instead: the kernel rounds less than dequantize-then-matmul.

The launcher never reads device values on the host, so the decoder step can be captured as a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from .backend import is_hopper, scaled_mm_supported
from .formats import Fp8Weight, Nvfp4Weight, QuantizedWeight
from .moe import sort_by_expert
from .scaled_mm import fp8_linear_scaled_mm, quantize_per_token
from .triton_fused import gelu_mul_triton, store_rounded

PLAIN = tl.constexpr(0)
FP8 = tl.constexpr(1)
NVFP4 = tl.constexpr(2)


@dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3


class Operands(NamedTuple):
    """A weight as the kernel sees it: 3-D buffers (expert, row, ...) and the format's constants."""

    format: int
    w: torch.Tensor  # PLAIN [E, N, K] any float; FP8 uint8 [E, N, K]; NVFP4 uint8 [E, N, K/2]
    scale: torch.Tensor  # FP8 fp32 [E, N, ceil(K/group)]; NVFP4 e4m3 bytes [E, N, K/16]; PLAIN unused
    global_scale: torch.Tensor  # NVFP4 fp32 [E, N]; otherwise unused
    group: int  # block-scaled FP8: the scale group along K; 0 for one scale per row, and for other formats
    num_experts: int
    N: int
    K: int


def weight_operands(weight: torch.Tensor | QuantizedWeight) -> Operands:
    """A 2-D weight ([N, K], no expert dim) is one expert."""
    if isinstance(weight, Fp8Weight):
        q, scale = weight.q.view(torch.uint8), weight.scale
        if q.dim() == 2:
            q, scale = q.unsqueeze(0), scale.unsqueeze(0)
        E, N, K = q.shape
        group = weight.group if weight.group < K else 0
        return Operands(FP8.value, q.contiguous(), scale.contiguous(), scale, group, E, N, K)
    if isinstance(weight, Nvfp4Weight):
        packed, block_scale, global_scale = weight.packed, weight.block_scale.view(torch.uint8), weight.global_scale
        if packed.dim() == 2:
            packed, block_scale, global_scale = packed.unsqueeze(0), block_scale.unsqueeze(0), global_scale.unsqueeze(0)
        E, N, half_k = packed.shape
        operands = (packed.contiguous(), block_scale.contiguous(), global_scale.contiguous())
        return Operands(NVFP4.value, *operands, 0, E, N, 2 * half_k)
    if isinstance(weight, QuantizedWeight):
        raise TypeError(f"no Triton kernel for {weight.format_name} weights")
    w = weight.unsqueeze(0) if weight.dim() == 2 else weight
    E, N, K = w.shape
    return Operands(PLAIN.value, w.contiguous(), w, w, 0, E, N, K)


def pick_config(M: int, ops: Operands, wgmma: bool = False) -> TileConfig:
    """A hand-picked table (autotuning breaks CUDA-graph capture and the interpreter).

    BLOCK_M follows the mean rows per expert: ~16 in a denoising step (256 tokens × top-8 over 128 experts),
    more in prefill and dense layers. BLOCK_N grows to 128 only when the grid still has several waves of programs
    for a 132-SM H100. BLOCK_K is 128 when it divides K, else 64 (704 = 11·64); masks handle any K.

    `wgmma`: Hopper's 64-row tensor-core tiles, which the launcher asks for two formats. FP8 × FP8 needs them
    for its FP8 instruction (Triton converts both operands to fp16 below 64 rows): compiled for sm90
    (`scripts/inspect_kernels.py`), a 64×128×128 tile with 4 warps takes 138 instructions per K-step against
    302 at 32 rows. NVFP4 is bound by decoding weights in registers, and 64×128×64 tiles with 4 warps issue 0.31
    warp instructions per weight against 0.39 for 32×128×128 (static counts, not yet timed on a GPU).
    """
    rows = triton.cdiv(M, ops.num_experts)
    # Measured on an H200 (scripts/gpu/check_kernels.py): at ~16 rows per expert, BLOCK_M 32 beat 16 in 6 of the
    # 8 decode cases (NVFP4 gate_up 392 vs 448 µs, FP8 315 vs 353 µs) and lost 1-10 µs in the other two.
    block_m = 32 if rows <= 32 and not wgmma else 64
    m_tiles = triton.cdiv(M, block_m) + ops.num_experts
    block_n = 128 if m_tiles * triton.cdiv(ops.N, 128) >= 512 else 64
    block_k = 128 if ops.K % 128 == 0 and not (wgmma and ops.format == NVFP4.value) else 64
    if ops.group:
        block_k = fp8_block_k(block_k, ops.group)
    num_warps = 8 if block_m * block_n >= 64 * 128 and not wgmma else 4
    return TileConfig(block_m, block_n, block_k, num_warps)


def fp8_block_k(block_k: int, group: int) -> int:
    """Block-scaled FP8 takes one scale per K-tile, so BLOCK_K must divide the group."""
    while group % block_k:
        block_k //= 2
    if block_k < 16:
        raise ValueError(f"FP8 scale group {group} is not a multiple of 16")
    return block_k


# How FP8 weights meet the activations: decoded by bit arithmetic (any GPU, and the interpreter), converted by
# the hardware (sm89+), or multiplied as FP8 by FP8 after quantizing the activations per token (sm89+).
Fp8Mode = Literal["bits", "cvt", "w8a8"]
FP8_MODES: tuple[Fp8Mode, ...] = ("bits", "cvt", "w8a8")


def default_fp8_mode(device: torch.device) -> Fp8Mode:
    """W8A8 where the GPU has FP8 tensor cores: what FP8-dynamic checkpoints are made for (per-channel weights,
    dynamic per-token activations) and what the dense layers already run; it decodes nothing."""
    return "w8a8" if scaled_mm_supported(device) else "bits"


def resolved_fp8_mode(ops: Operands, fp8_mode: Fp8Mode | None, device: torch.device) -> Fp8Mode | None:
    return (fp8_mode or default_fp8_mode(device)) if ops.format == FP8.value else None


def launch_config(M: int, ops: Operands, device: torch.device, fp8_mode: Fp8Mode | None = None) -> TileConfig:
    """The tiles the launcher takes on `device` when not given any."""
    wgmma = (resolved_fp8_mode(ops, fp8_mode, device) == "w8a8" or ops.format == NVFP4.value) and is_hopper(device)
    return pick_config(M, ops, wgmma)


def grouped_matmul_triton(
    x: torch.Tensor,
    weight: torch.Tensor | QuantizedWeight,
    offsets: torch.Tensor,
    config: TileConfig | None = None,
    fp8_mode: Fp8Mode | None = None,
    gather: tuple[torch.Tensor, int] | None = None,
    scatter: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """x [M, K] rows sorted by expert, weight [E, N, K] (or [N, K]), offsets [E] cumulative row ends -> [M, N].

    Rows past offsets[-1] are left unwritten, as in `F.grouped_mm`. `fp8_mode` picks how FP8 weights are used
    (see `Fp8Mode`); the default follows the device. For an MoE, whose sorted row r is the (token, k) pair
    order[r] (flat index token·top_k + k), the sort can stay out of memory on either side:
    - gather=(order, top_k): x holds one row per token, and row r reads x[order[r] // top_k];
    - scatter=(order, weights): the product of row r, times weights[order[r]] (fp32), goes to output row
      order[r]: the output is in pair order, ready for a sum over k.
    """
    ops = weight_operands(weight)
    M = x.shape[0] if gather is None else gather[0].shape[0]
    if x.shape[1] != ops.K or offsets.shape != (ops.num_experts,):
        raise ValueError(f"x {list(x.shape)} and offsets {list(offsets.shape)} do not fit a weight {weight.shape}")
    out = torch.empty(M, ops.N, dtype=x.dtype, device=x.device)
    if M == 0:
        return out
    mode = resolved_fp8_mode(ops, fp8_mode, x.device)
    w8a8 = mode == "w8a8"
    config = config or launch_config(M, ops, x.device, mode)
    if ops.group % config.block_k:
        raise ValueError(f"BLOCK_K {config.block_k} does not divide the FP8 scale group {ops.group}")
    x_scale = x  # unused unless the activations are quantized
    if w8a8:
        x, x_scale = quantize_per_token(x, ops.group)  # one scale per token, or per token and weight K-group
    # Each expert may leave one partial tile, so ceil(M / BLOCK_M) + E tiles always suffice.
    max_tiles = triton.cdiv(M, config.block_m) + ops.num_experts
    grid = (max_tiles, triton.cdiv(ops.N, config.block_n))
    order = gather[0] if gather is not None else scatter[0] if scatter is not None else offsets
    _grouped_matmul_kernel[grid](
        x.contiguous(),
        x_scale,
        order,
        scatter[1] if scatter is not None else x_scale,
        gather[1] if gather is not None else 1,
        ops.w.view(torch.float8_e4m3fn) if mode in ("cvt", "w8a8") else ops.w,
        ops.scale,
        ops.global_scale,
        out,
        offsets,
        ops.num_experts,
        ops.N,
        ops.K,
        ops.w.stride(0),
        ops.w.stride(1),
        ops.scale.stride(0),
        ops.scale.stride(1),
        x_scale.stride(0),
        FORMAT=ops.format,
        GROUP=ops.group,
        FP8_MODE=FP8_MODES.index(mode) if mode else 0,
        DOT_FP32=not isinstance(_grouped_matmul_kernel, JITFunction),  # the interpreter's stand-in
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        BLOCK_E=triton.next_power_of_2(ops.num_experts),
        GATHER=gather is not None,
        SCATTER=scatter is not None,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out


def experts_forward_triton(
    x: torch.Tensor,
    weights: torch.Tensor,
    experts: torch.Tensor,
    gate_up: torch.Tensor | QuantizedWeight,
    down: torch.Tensor | QuantizedWeight,
) -> torch.Tensor:
    """`moe.experts_forward` on a GPU: the first product gathers the tokens' rows through the sort, the second
    writes each weighted pair back in pair order, and the sum over top_k rounds once (in fp32)."""
    T, K = experts.shape
    order, offsets = sort_by_expert(experts, gate_up.shape[0])
    gate, up = grouped_matmul_triton(x, gate_up, offsets, gather=(order, K)).chunk(2, dim=-1)
    pairs = grouped_matmul_triton(gelu_mul_triton(gate, up), down, offsets, scatter=(order, weights.reshape(-1)))
    return pairs.view(T, K, -1).sum(1)


def linear_triton(x: torch.Tensor, weight: Fp8Weight | Nvfp4Weight) -> torch.Tensor:
    """`moe.linear` on a GPU: the grouped kernel with one group, or FP8 × FP8 for a per-channel FP8 weight."""
    if isinstance(weight, Fp8Weight) and weight.group >= weight.shape[-1] and scaled_mm_supported(x.device):
        # FP8 × FP8 on FP8 tensor cores: 63 µs against the W8A16 Triton kernel's 140 µs for a 256-token canvas
        # through a 4224×2816 layer (H200, scripts/gpu/check_kernels.py).
        return fp8_linear_scaled_mm(x, weight)
    flat = x.reshape(-1, x.shape[-1])
    offsets = torch.full((1,), flat.shape[0], dtype=torch.int32, device=x.device)
    out = grouped_matmul_triton(flat, weight, offsets)  # a 2-D weight is one expert
    return out.reshape(*x.shape[:-1], out.shape[-1])


# -- kernel ----------------------------------------------------------------------------------------------------


@triton.jit
def e4m3_bits_to_f16(byte):
    """float8_e4m3fn bytes -> fp16 holding 2^-8 times their values, exactly (NaN bytes 0x7F/0xFF never occur).

    Sign, exponent and mantissa shift into fp16's fields. fp16's exponent bias is 8 larger and its subnormals line
    up with e4m3's, so every value, subnormals included, comes out 2^-8 times too small.
    """
    b = byte.to(tl.uint16)
    return (((b & 0x80) << 8) | ((b & 0x7F) << 7)).to(tl.float16, bitcast=True)


@triton.jit
def e4m3_to_f16(byte):
    return e4m3_bits_to_f16(byte) * 256.0


@triton.jit
def e2m1_bits_to_f16(code):
    """4-bit E2M1 codes (bit 3 the sign) -> fp16 holding 2^-14 times [0, .5, 1, 1.5, 2, 3, 4, 6] (and negatives),
    the same way."""
    c = code.to(tl.uint16)
    return (((c & 0x8) << 12) | ((c & 0x7) << 9)).to(tl.float16, bitcast=True)


@triton.jit
def _load_nvfp4_tile(w_rows, s_rows, col_ok, k0, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_N, BLOCK_K] fp16: E2M1 values times their e4m3 block scales, times 2^-8 (the kernel's epilogue
    multiplies that back with the global scale).

    The E2M1 values come out 2^-14 too small and the scales are made 2^14 · 2^-8 = 2^6 too large, which keeps
    the per-element work to one multiply. Each product has at most 2 + 4 significant bits and lies between 2^-18
    and 10.5: exact in fp16 (subnormal at the low end) and in bf16.
    """
    j = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    packed = tl.load(w_rows + j[None, :], mask=col_ok[:, None] & (j[None, :] < K // 2), other=0)
    codes = tl.interleave(packed & 0xF, packed >> 4)  # element 2j is the low nibble of byte j
    g = k0 // 16 + tl.arange(0, BLOCK_K // 16)  # one e4m3 scale per 16 elements
    scale_bytes = tl.load(s_rows + g[None, :], mask=col_ok[:, None] & (g[None, :] < K // 16), other=0)
    values = tl.reshape(e2m1_bits_to_f16(codes), (BLOCK_N, BLOCK_K // 16, 16))
    scales = e4m3_bits_to_f16(scale_bytes) * 16384.0
    return tl.reshape(values * scales[:, :, None], (BLOCK_N, BLOCK_K))


@triton.jit
def _grouped_matmul_kernel(
    x_ptr,
    x_scale_ptr,
    order_ptr,
    pair_weights_ptr,
    top_k,
    w_ptr,
    scale_ptr,
    global_scale_ptr,
    out_ptr,
    offsets_ptr,
    num_experts,
    N,
    K,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    stride_xs,
    FORMAT: tl.constexpr,
    GROUP: tl.constexpr,
    FP8_MODE: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_E: tl.constexpr,
    GATHER: tl.constexpr,
    SCATTER: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    # Which expert's rows this M-tile covers, from the row offsets alone: each expert has ceil(rows / BLOCK_M)
    # tiles, in expert order. A few hundred instructions per program, instead of a tile map built by six small
    # kernels before each launch.
    e = tl.arange(0, BLOCK_E)
    ends = tl.load(offsets_ptr + e, mask=e < num_experts, other=0)
    begins = tl.load(offsets_ptr + e - 1, mask=(e > 0) & (e < num_experts), other=0)
    tiles = tl.cdiv(ends - begins, BLOCK_M)
    expert = tl.sum((tl.cumsum(tiles, axis=0) <= pid_m).to(tl.int32), axis=0)
    if expert >= num_experts:  # the grid is a static upper bound on the tile count
        return
    row_end = tl.load(offsets_ptr + expert)
    row_begin = tl.load(offsets_ptr + expert - 1, mask=expert > 0, other=0)
    first_tile = tl.sum(tl.where(e < expert, tiles, 0), axis=0)
    rows = row_begin + (pid_m - first_tile) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < row_end
    col_ok = cols < N
    ks = tl.arange(0, BLOCK_K)

    pairs = tl.load(order_ptr + rows, mask=row_ok, other=0) if GATHER or SCATTER else rows
    x_index = pairs // top_k if GATHER else rows  # the token whose activations row r multiplies
    x_rows = x_ptr + x_index.to(tl.int64)[:, None] * K
    w_rows = w_ptr + expert.to(tl.int64) * stride_we + cols[:, None] * stride_wn
    s_rows = scale_ptr + expert.to(tl.int64) * stride_se + cols * stride_sn

    W8A8: tl.constexpr = FORMAT == FP8 and FP8_MODE == 2  # a is e4m3 too: FP8 × FP8 on FP8 tensor cores
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + ks
        a = tl.load(x_rows + k[None, :], mask=row_ok[:, None] & (k[None, :] < K), other=0.0)
        if DOT_FP32:  # the interpreter, whose tl.dot multiplies bf16 bit patterns as integers
            a = a.to(tl.float32)
        w_mask = col_ok[:, None] & (k[None, :] < K)
        if FORMAT == PLAIN or (FORMAT == FP8 and FP8_MODE > 0):  # FP8: e4m3 pointers, used as they are by W8A8
            w = tl.load(w_rows + k[None, :], mask=w_mask, other=0.0)  # or converted by `cvt` below
        elif FORMAT == FP8:
            w = e4m3_to_f16(tl.load(w_rows + k[None, :], mask=w_mask, other=0))
        else:
            w = _load_nvfp4_tile(w_rows, s_rows[:, None], col_ok, k0, K, BLOCK_N, BLOCK_K)
        b = tl.trans(w.to(a.dtype))
        if FORMAT == FP8 and GROUP > 0:
            # The tile lies inside one scale group (BLOCK_K divides GROUP): one fp32 scale per output column,
            # and with W8A8 one per row for the activations of that group.
            s = tl.load(s_rows + k0 // GROUP, mask=col_ok, other=0.0)[None, :]
            if W8A8:
                s = s * tl.load(x_scale_ptr + x_index * stride_xs + k0 // GROUP, mask=row_ok, other=0.0)[:, None]
            acc += tl.dot(a, b) * s
        else:
            acc = tl.dot(a, b, acc)

    if FORMAT == FP8 and GROUP == 0:
        acc *= tl.load(s_rows, mask=col_ok, other=0.0)[None, :]
        if W8A8:
            acc *= tl.load(x_scale_ptr + x_index * stride_xs, mask=row_ok, other=0.0)[:, None]
    if FORMAT == NVFP4:
        acc *= tl.load(global_scale_ptr + expert.to(tl.int64) * N + cols, mask=col_ok, other=0.0)[None, :] * 256.0
    out_rows = rows
    if SCATTER:
        acc *= tl.load(pair_weights_ptr + pairs, mask=row_ok, other=0.0)[:, None]
        out_rows = pairs
    out_ptrs = out_ptr + out_rows.to(tl.int64)[:, None] * N + cols[None, :]
    store_rounded(out_ptrs, acc, row_ok[:, None] & col_ok[None, :])  # rounded as a GPU does, in the interpreter too
