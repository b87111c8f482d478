"""The FP8 and NVFP4 layouts against their definitions, against compressed-tensors, and through the dispatcher.

compressed-tensors (the library vLLM loads checkpoints with) is the outside reference for what checkpoint bytes mean:
our dequantization must reproduce its decompressors, and our quantizers its quantizers, up to float32 rounding.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from dgemma_kernels import formats, grouped_matmul, linear
from dgemma_kernels.formats import (
    E2M1_VALUES,
    FP4_MAX,
    FP8_MAX,
    FP8_SCALE_MIN,
    NVFP4_GROUP,
    Fp8Weight,
    Nvfp4Weight,
    QuantizedWeight,
    e2m1_table,
    pack_nibbles,
    quantize_fp8,
    quantize_nvfp4,
    round_to_e2m1,
    unpack_nibbles,
)

MIDPOINTS = [(a + b) / 2 for a, b in itertools.pairwise(E2M1_VALUES)]


@pytest.fixture(scope="module")
def ct() -> SimpleNamespace:
    """compressed-tensors' own quantize / pack / decompress code, skipped where it is not installed."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.helpers import kE2M1ToFloat, pack_fp4_to_uint8, unpack_fp4_from_uint8
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from compressed_tensors.quantization.quant_scheme import FP8, FP8_BLOCK, FP8_DYNAMIC, NVFP4A16
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

    fp8_group = QuantizationArgs(num_bits=8, type="float", strategy="group", group_size=128, symmetric=True)
    return SimpleNamespace(
        FloatQuantizationCompressor=FloatQuantizationCompressor,
        NVFP4PackedCompressor=NVFP4PackedCompressor,
        kE2M1ToFloat=kE2M1ToFloat,
        pack_fp4_to_uint8=pack_fp4_to_uint8,
        unpack_fp4_from_uint8=unpack_fp4_from_uint8,
        dequantize=dequantize,
        calculate_qparams=calculate_qparams,
        generate_gparam=generate_gparam,
        nvfp4=QuantizationScheme(targets=["Linear"], **NVFP4A16),
        fp8={
            "channel": QuantizationScheme(targets=["Linear"], **FP8_DYNAMIC),
            "tensor": QuantizationScheme(targets=["Linear"], **FP8),
            "block": QuantizationScheme(targets=["Linear"], **FP8_BLOCK),
            "group": QuantizationScheme(targets=["Linear"], weights=fp8_group),
        },
    )


def gaussian(*shape: int, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return ((approx.double() - exact.double()).norm() / exact.double().norm()).item()


# -- E2M1 codes and packing ----------------------------------------------------------------------------------


def test_e2m1_table_follows_the_bit_layout():
    """Code = sign bit 3, exponent bits 2..1 (bias 1), mantissa bit 0; exponent 0 is subnormal (0 or 0.5)."""
    table = e2m1_table()
    for code in range(16):
        sign, exponent, mantissa = code >> 3, (code >> 1) & 3, code & 1
        magnitude = mantissa * 0.5 if exponent == 0 else 2.0 ** (exponent - 1) * (1 + mantissa / 2)
        assert table[code].item() == (-magnitude if sign else magnitude)
        assert torch.signbit(table[code]).item() == bool(sign)  # code 8 is -0, not +0


def test_e2m1_table_matches_compressed_tensors(ct):
    assert torch.equal(e2m1_table()[:8], ct.kE2M1ToFloat)


def test_nibble_order_low_nibble_first():
    lo, hi = torch.meshgrid(torch.arange(16, dtype=torch.uint8), torch.arange(16, dtype=torch.uint8), indexing="ij")
    pairs = torch.stack((lo.flatten(), hi.flatten()), dim=-1)  # element 2j, element 2j+1
    assert torch.equal(pack_nibbles(pairs).squeeze(-1), (lo + 16 * hi).flatten())


def test_pack_unpack_round_trip():
    codes = torch.randint(0, 16, (3, 5, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(unpack_nibbles(pack_nibbles(codes)), codes)
    every_byte = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    assert torch.equal(pack_nibbles(unpack_nibbles(every_byte)), every_byte)


def test_packing_matches_compressed_tensors(ct):
    every_byte = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(4, 64)
    theirs = ct.unpack_fp4_from_uint8(every_byte, 4, 128, dtype=torch.float32)
    ours = e2m1_table()[unpack_nibbles(every_byte).long()]
    assert torch.equal(theirs, ours) and torch.equal(torch.signbit(theirs), torch.signbit(ours))
    assert torch.equal(ct.pack_fp4_to_uint8(ours), every_byte)


def nearest_e2m1_code(x: torch.Tensor) -> torch.Tensor:
    """Brute force in float64, where distances from float32 inputs are exact: nearest magnitude, ties to even."""
    distance = (x.double().abs().unsqueeze(-1) - torch.tensor(E2M1_VALUES, dtype=torch.float64)).abs()
    nearest = distance == distance.min(-1, keepdim=True).values
    even = nearest & (torch.arange(8) % 2 == 0)
    code = torch.where(even.any(-1), even.int().argmax(-1), nearest.int().argmax(-1))
    return code.to(torch.uint8) | ((x < 0).to(torch.uint8) << 3)


def test_round_to_e2m1_nearest_ties_to_even_sign_kept():
    mids = torch.tensor(MIDPOINTS)
    values = torch.tensor(E2M1_VALUES)
    # Exact ties, the floats either side of each tie (on one side the nearest value is the odd neighbour),
    # every representable value, and a spread of random ones.
    x = torch.cat(
        (
            mids,
            torch.nextafter(mids, torch.full_like(mids, 7.0)),
            torch.nextafter(mids, torch.zeros_like(mids)),
            values,
            torch.empty(10_000).uniform_(0, 6, generator=torch.Generator().manual_seed(2)),
        )
    )
    x = torch.cat((x, -x))
    codes, expected = round_to_e2m1(x), nearest_e2m1_code(x)
    wrong = codes != expected
    assert not wrong.any(), (
        f"{x[wrong][:8].tolist()} -> codes {codes[wrong][:8].tolist()}, nearest {expected[wrong][:8].tolist()}"
    )
    assert codes[x < 0].ge(8).all(), "negatives, even those that round to 0, keep the sign bit (-0 = code 8)"


# -- NVFP4 against compressed-tensors ------------------------------------------------------------------------


def nvfp4_on_disk(weight: Nvfp4Weight, expert: int) -> dict[str, torch.Tensor]:
    """One expert as compressed-tensors stores it: the same bytes and block scales, the global scale inverted."""
    return {
        "weight_packed": weight.packed[expert],
        "weight_scale": weight.block_scale[expert],
        "weight_global_scale": 1 / weight.global_scale[expert, :1],
    }


def test_nvfp4_dequantize_matches_compressed_tensors(ct):
    w = gaussian(3, 64, 256) * torch.tensor([1e-3, 1.0, 30.0]).view(3, 1, 1)
    ours = quantize_nvfp4(w)
    for e in range(3):
        disk = nvfp4_on_disk(ours, e)
        # Their decompressor's arithmetic in float32: only the reciprocal global scale's rounding may differ.
        codes = ct.unpack_fp4_from_uint8(disk["weight_packed"], 64, 256, dtype=torch.float32)
        theirs = ct.dequantize(
            codes,
            disk["weight_scale"].float(),
            args=ct.nvfp4.weights,
            global_scale=disk["weight_global_scale"],
            dtype=torch.float32,
        )
        torch.testing.assert_close(ours.dequantize(torch.float32)[e], theirs, rtol=1e-6, atol=0)
        # Their decompressor as a loader runs it (bf16 out): at most one bf16 rounding step apart.
        decompressed = ct.NVFP4PackedCompressor.decompress(disk, ct.nvfp4)["weight"]
        torch.testing.assert_close(ours.dequantize(torch.bfloat16)[e], decompressed, rtol=2**-7, atol=0)


def test_nvfp4_per_row_global_scale_matches_compressed_tensors(ct):
    """compressed-tensors quantizes gate and up apart, so a fused gate_up carries two global scales."""
    gate, up = quantize_nvfp4(gaussian(1, 32, 128, seed=3)), quantize_nvfp4(gaussian(1, 32, 128, seed=4) * 50)
    fused = Nvfp4Weight(
        torch.cat((gate.packed, up.packed), 1),
        torch.cat((gate.block_scale, up.block_scale), 1),
        torch.cat((gate.global_scale, up.global_scale), 1),
    )
    halves = fused.dequantize(torch.float32).split(32, dim=1)
    for half, part in zip(halves, (gate, up), strict=True):
        theirs = ct.NVFP4PackedCompressor.decompress(nvfp4_on_disk(part, 0), ct.nvfp4)["weight"]
        torch.testing.assert_close(half[0].bfloat16(), theirs, rtol=2**-7, atol=0)


def test_nvfp4_quantize_matches_compressed_tensors(ct):
    N, K = 256, 1024
    w = gaussian(N, K, seed=2)  # a draw where ties split hundreds of codes, so the tolerance below is exercised
    observed = w.float()
    global_scale = ct.generate_gparam(observed.amin(), observed.amax())  # 448·6 / amax
    blocks = observed.unflatten(-1, (-1, 16))
    scale, _ = ct.calculate_qparams(blocks.amin(-1), blocks.amax(-1), ct.nvfp4.weights, global_scale=global_scale)
    state = {"weight": w, "weight_scale": scale, "weight_global_scale": global_scale}
    theirs = ct.NVFP4PackedCompressor.compress(state, ct.nvfp4)
    ours = quantize_nvfp4(w)

    torch.testing.assert_close(ours.global_scale, (1 / global_scale).expand(N), rtol=1e-6, atol=0)
    assert torch.equal(ours.block_scale.view(torch.uint8), theirs["weight_scale"].view(torch.uint8))
    our_codes, their_codes = unpack_nibbles(ours.packed), unpack_nibbles(theirs["weight_packed"])
    differ = our_codes != their_codes
    # Codes may differ only at ties: bf16 inputs over fp8 scales put many exact ratios right on a midpoint, where
    # their s / g_ct and our s · g fall on either side by a float32 rounding. Each must be such a tie, with the two
    # codes the neighbours around it.
    step = theirs["weight_scale"].double().repeat_interleave(16, -1) / global_scale.double()
    ratio = (w.double() / step)[differ].abs()
    mids = torch.tensor(MIDPOINTS, dtype=torch.float64)
    gap = (ratio.unsqueeze(-1) / mids - 1).abs()
    assert (gap.min(-1).values < 2**-21).all()
    table = e2m1_table().double()
    ours_v, theirs_v = table[our_codes[differ].long()].abs(), table[their_codes[differ].long()].abs()
    torch.testing.assert_close((ours_v + theirs_v) / 2, mids[gap.argmin(-1)], rtol=0, atol=0)
    # Everywhere else the dequantized values agree up to that same float32 rounding of the step.
    their_values = ct.dequantize(
        ct.unpack_fp4_from_uint8(theirs["weight_packed"], N, K, dtype=torch.float32),
        theirs["weight_scale"].float(),
        args=ct.nvfp4.weights,
        global_scale=global_scale,
        dtype=torch.float32,
    )
    ours_deq = ours.dequantize(torch.float32)
    torch.testing.assert_close(ours_deq[~differ], their_values[~differ], rtol=1e-6, atol=0)


# -- FP8 against compressed-tensors --------------------------------------------------------------------------


def fp8_from_disk(q: torch.Tensor, scale: torch.Tensor, strategy: str) -> Fp8Weight:
    """compressed-tensors' per-tensor [1], per-channel [N, 1] or 128×128 block scales in our per-row-group layout."""
    N, K = q.shape
    if strategy == "block":  # every row of a block row shares its scales: groups of 128 along K
        return Fp8Weight(q, scale.repeat_interleave(128, dim=0)[:N], group=128)
    return Fp8Weight(q, scale.float().expand(N, 1), group=K)


def ct_fp8_scales(ct, observed: torch.Tensor, strategy: str) -> torch.Tensor:
    """The absmax/448 scales an llm-compressor observer would hand compressed-tensors, in the observed dtype."""
    args = ct.fp8[strategy].weights
    if strategy == "tensor":
        mins, maxs = observed.amin(), observed.amax()
    elif strategy == "channel":
        mins, maxs = observed.amin(-1, keepdim=True), observed.amax(-1, keepdim=True)
    elif strategy == "group":
        groups = observed.unflatten(-1, (-1, 128))
        mins, maxs = groups.amin(-1), groups.amax(-1)
    else:  # 128×128 blocks, the ragged edge blocks padded with zeros
        N, K = observed.shape
        blocks = F.pad(observed, (0, -K % 128, 0, -N % 128)).unflatten(0, (-1, 128)).unflatten(-1, (-1, 128))
        mins, maxs = blocks.amin((1, 3)), blocks.amax((1, 3))
    return ct.calculate_qparams(mins, maxs, args)[0]


@pytest.mark.parametrize("scale_dtype", [torch.bfloat16, torch.float32])  # llm-compressor bf16; ModelOpt, DeepSeek fp32
@pytest.mark.parametrize("strategy", ["tensor", "channel", "block"])
def test_fp8_dequantize_matches_compressed_tensors(ct, strategy, scale_dtype):
    N, K = 300, 200  # neither a multiple of 128: ragged blocks on both axes
    w = gaussian(N, K, seed=6)
    scheme = ct.fp8[strategy]
    disk = ct.FloatQuantizationCompressor.compress(
        {"weight": w, "weight_scale": ct_fp8_scales(ct, w.to(scale_dtype), strategy)}, scheme
    )
    assert disk["weight"].dtype == torch.float8_e4m3fn and disk["weight_scale"].dtype == scale_dtype
    theirs = ct.FloatQuantizationCompressor.decompress(disk, scheme)["weight"]  # computed in the scale's dtype
    ours = fp8_from_disk(disk["weight"], disk["weight_scale"], strategy)
    assert torch.equal(ours.dequantize(scale_dtype), theirs)


@pytest.mark.parametrize("strategy", ["channel", "group"])
def test_fp8_quantize_matches_compressed_tensors(ct, strategy):
    N, K = 300, 256  # their group strategy needs K divisible by the group
    w = gaussian(N, K, seed=7)
    scheme = ct.fp8[strategy]
    scale = ct_fp8_scales(ct, w.float(), strategy)
    theirs = ct.FloatQuantizationCompressor.compress({"weight": w, "weight_scale": scale}, scheme)
    ours = quantize_fp8(w, group=128 if strategy == "group" else None)
    # Same float32 division and the same e4m3 cast on both sides, so no tie can split them: bitwise equal.
    assert torch.equal(ours.scale, theirs["weight_scale"].reshape(ours.scale.shape))
    assert torch.equal(ours.q.view(torch.uint8), theirs["weight"].view(torch.uint8))
    theirs_deq = ct.FloatQuantizationCompressor.decompress(theirs, scheme)["weight"]
    assert torch.equal(ours.dequantize(torch.float32), theirs_deq)


# -- round-trip error, dispatcher, sizes ---------------------------------------------------------------------

QUANTIZERS = {
    "fp8-channel": quantize_fp8,
    "fp8-group128": lambda w: quantize_fp8(w, group=128),
    "nvfp4": quantize_nvfp4,
}


# Relative Frobenius error of quantize → dequantize on Gaussian weights, each expert at its own magnitude.
# Measured here (torch 2.13 CPU): FP8 per channel 2.65 %, per 128-group 2.57 %, NVFP4 9.50 % (the notes'
# §6.4 gives 2.6 % and 9.5 % per GEMM). Upper bounds sit a little above; lower bounds catch a lossless fake.
@pytest.mark.parametrize(
    ("fmt", "low", "high"), [("fp8-channel", 0.02, 0.028), ("fp8-group128", 0.02, 0.027), ("nvfp4", 0.085, 0.098)]
)
def test_round_trip_error_within_published_bounds(fmt, low, high):
    w = gaussian(3, 512, 1024, seed=8) * torch.tensor([1e-3, 1.0, 30.0]).view(3, 1, 1)
    deq = QUANTIZERS[fmt](w).dequantize(torch.float32)
    for e in range(3):
        assert low < relative_error(deq[e], w[e]) < high


@pytest.mark.parametrize("fmt", list(QUANTIZERS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_grouped_matmul_with_quantized_weight(fmt, dtype):
    weight = QUANTIZERS[fmt](gaussian(4, 48, 160, seed=9))
    counts = [5, 0, 7, 0]  # the middle and the last expert get no rows
    offsets = torch.tensor(counts, dtype=torch.int32).cumsum(0).int()
    x = gaussian(sum(counts), 160, seed=10, dtype=dtype)
    out = grouped_matmul(x, weight, offsets)
    deq = weight.dequantize(dtype)
    assert torch.equal(out, F.grouped_mm(x, deq.transpose(1, 2), offs=offsets))
    expected = torch.cat([rows @ w.T for rows, w in zip(x.float().split(counts), deq.float(), strict=True)])
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item())


@pytest.mark.parametrize("fmt", list(QUANTIZERS))
def test_linear_with_quantized_weight(fmt):
    weight = QUANTIZERS[fmt](gaussian(48, 160, seed=11))
    x = gaussian(2, 3, 160, seed=12)
    out = linear(x, weight)
    assert out.shape == (2, 3, 48)
    assert torch.equal(out, F.linear(x, weight.dequantize(torch.bfloat16)))


@pytest.mark.parametrize(
    ("fmt", "per_matrix"),
    [
        ("fp8-channel", lambda N, K: N * K + 4 * N),
        ("fp8-group128", lambda N, K: N * K + 4 * N * math.ceil(K / 128)),
        ("nvfp4", lambda N, K: N * K // 2 + N * K // 16 + 4 * N),
    ],
)
def test_nbytes_is_what_the_layout_implies(fmt, per_matrix):
    E, N, K = 2, 48, 160
    weight: QuantizedWeight = QUANTIZERS[fmt](gaussian(E, N, K, seed=13))
    assert weight.shape == (E, N, K)
    assert weight.nbytes == E * per_matrix(N, K)


# -- the chunked quantizers against the straightforward algorithm they replace -------------------------------
#
# quantize_nvfp4 / quantize_fp8 walk the weight in row chunks with integer tricks (see kernels/formats.py); their
# bytes must be those of the plain whole-tensor algorithm below (the one they replaced, kept verbatim), for every
# input: ties, zeros and -0, subnormals, quotients past 6, odd row counts over several chunks, expert stacks.


def reference_round_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """|x| <= 6 expected (its uint8 steps wrap from |x| = 503 on)."""
    a = x.abs()
    scale = (a >= 2).to(torch.uint8) + (a >= 4).to(torch.uint8)
    steps = torch.ldexp(a, 1 - scale.to(torch.int32)).round_()
    code = (steps.to(torch.uint8) + 2 * scale).clamp_(max=7)
    return code | ((x < 0).to(torch.uint8) << 3)


def reference_quantize_fp8(weight: torch.Tensor, group: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    K = weight.shape[-1]
    group = group or K
    padded = F.pad(weight, (0, -K % group)) if K % group else weight
    blocks = padded.unflatten(-1, (-1, group))
    scale = (blocks.abs().amax(-1).float() / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    scaled = blocks.to(torch.float32, copy=True).div_(scale.unsqueeze(-1))
    return scaled.flatten(-2)[..., :K].to(torch.float8_e4m3fn), scale


def reference_quantize_nvfp4(
    weight: torch.Tensor, global_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if global_scale is None:
        amax = weight.abs().amax(dim=(-2, -1)).float()
        g = (amax / (FP4_MAX * FP8_MAX)).clamp(min=torch.finfo(torch.float32).tiny)
    else:
        g = global_scale.float()
    blocks = weight.to(torch.float32, copy=True).unflatten(-1, (-1, NVFP4_GROUP))
    block_amax = blocks.abs().amax(-1)
    g_rows = g[..., None, None]
    block_scale = (block_amax / (FP4_MAX * g_rows)).clamp(FP8_SCALE_MIN, FP8_MAX).to(torch.float8_e4m3fn)
    step = block_scale.float() * g_rows
    codes = reference_round_to_e2m1(blocks.div_(step.unsqueeze(-1)).clamp_(-FP4_MAX, FP4_MAX)).flatten(-2)
    return pack_nibbles(codes), block_scale, g.unsqueeze(-1).expand(*weight.shape[:-1]).contiguous()


def assert_nvfp4_matches_reference(w: torch.Tensor, global_scale: torch.Tensor | None = None) -> None:
    ours = quantize_nvfp4(w, global_scale)
    packed, block_scale, global_rows = reference_quantize_nvfp4(w, global_scale)
    assert torch.equal(ours.block_scale.view(torch.uint8), block_scale.view(torch.uint8))
    assert torch.equal(ours.global_scale, global_rows)
    differ = ours.packed != packed
    assert not differ.any(), (
        f"{int(differ.sum())} of {differ.numel()} bytes differ, first at {differ.nonzero()[0].tolist()}"
    )


def assert_fp8_matches_reference(w: torch.Tensor, group: int | None = None) -> None:
    ours = quantize_fp8(w, group)
    q, scale = reference_quantize_fp8(w, group)
    assert torch.equal(ours.scale, scale)
    assert torch.equal(ours.q.view(torch.uint8), q.view(torch.uint8))


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of a few rows, so that modest weights span several, the last one short."""
    monkeypatch.setattr(formats, "CHUNK_ELEMENTS_PER_THREAD", 1000)
    monkeypatch.setattr(formats, "ABS_MAX_CHUNK_ELEMENTS_PER_THREAD", 3000)


def tie_heavy(*shape: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Quarter-integers with 6 planted in some blocks: with a step of 1, 2 or 1/2 most quotients land on E2M1's
    grid or its midpoints; then rows of zeros, of -0 and of the smallest negative subnormal."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-24, 25, shape, generator=g).float() / 4
    rows = w.view(-1, shape[-1])
    rows[::3, ::16] = 6.0
    rows[1::4] = 0.0
    rows[2::4] = -0.0
    rows[3::4, :16] = -torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
    return w.to(dtype)


def test_round_to_e2m1_matches_the_reference_on_every_16_bit_value():
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
        x = x[x.abs() <= 500]  # the reference's domain (NaN excluded)
        assert torch.equal(round_to_e2m1(x), reference_round_to_e2m1(x))
        assert torch.equal(round_to_e2m1(x.float()), reference_round_to_e2m1(x.float()))


def test_round_to_e2m1_matches_the_reference_around_every_midpoint():
    mids = torch.tensor(MIDPOINTS)
    x = torch.cat([mids] + [torch.nextafter(mids, mids + d) for d in (-1, 1)] + [torch.tensor(E2M1_VALUES)])
    for dtype, ulps in ((torch.float32, 2.0**-23), (torch.float64, 2.0**-52)):
        near = x.to(dtype).unsqueeze(-1) * (1 + ulps * torch.arange(-64, 65, dtype=dtype))
        spread = torch.empty(20_000, dtype=dtype).uniform_(0, 7, generator=torch.Generator().manual_seed(35))
        near = torch.cat((near.flatten(), spread))
        near = torch.cat((near, -near, torch.tensor([0.0, -0.0], dtype=dtype)))
        assert torch.equal(round_to_e2m1(near), reference_round_to_e2m1(near))


def test_round_to_e2m1_saturates_past_6():
    x = torch.tensor([6.0, 6.5, 7.0, 9.0, 500.0, 1e20, float("inf")])
    assert round_to_e2m1(x).tolist() == [7] * 7
    assert round_to_e2m1(-x).tolist() == [15] * 7


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 16), (3, 32), (5, 2, 48), (37, 96), (3, 29, 160)])
def test_quantize_nvfp4_matches_the_reference(small_chunks, shape, dtype):
    assert_nvfp4_matches_reference(gaussian(*shape, seed=20, dtype=dtype))
    assert_nvfp4_matches_reference(tie_heavy(*shape, seed=21, dtype=dtype))
    for global_scale in (torch.tensor(1.0), torch.tensor(0.5), torch.tensor(2.0**-5)):  # steps on the grid
        assert_nvfp4_matches_reference(tie_heavy(*shape, seed=22, dtype=dtype), global_scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quantize_nvfp4_matches_the_reference_on_every_16_bit_value(small_chunks, dtype):
    """Every finite value below 1000 in magnitude, shuffled into blocks: the signs come from the input's bits."""
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    x = x[x.abs() < 1000]
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(23))]
    assert_nvfp4_matches_reference(x[: len(x) // 64 * 64].view(-1, 64))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_quantize_nvfp4_matches_the_reference_where_quotients_pass_6(small_chunks, dtype):
    """Block scales in e4m3's subnormal range round down by up to a third, and a small global scale clamps them at
    448: quotients reach 9 and beyond, which must still give code 7."""
    w = gaussian(3, 24, 64, seed=24, dtype=dtype)
    w[0] *= 1.49 * 6 * 2.0**-9 / w[0].abs().amax(-1, keepdim=True)  # block scales 1.49 * 2^-9 -> 2^-9
    assert_nvfp4_matches_reference(w, torch.tensor([1.0, 1e-4, 1.0]))
    assert_nvfp4_matches_reference(w, torch.tensor(1e-6))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_quantize_nvfp4_matches_the_reference_where_signs_need_the_quotients(small_chunks, dtype):
    """Quotients that underflow to 0 (signless even for negative x); negative, zero (0 / 0: NaN quotients, code 0)
    and infinite global scales; NaN weights."""
    w = tie_heavy(2, 16, 64, seed=25, dtype=dtype)
    w[0, 0, 0] = torch.finfo(dtype).max / 2  # a huge global scale: the tiny negatives' quotients underflow
    assert_nvfp4_matches_reference(w)
    for global_scale in (torch.tensor([-0.01, 0.02]), torch.tensor([0.0, 1.0]), torch.tensor([float("inf"), 1e30])):
        assert_nvfp4_matches_reference(w, global_scale)
    w[1, 5, 7] = float("nan")
    assert_nvfp4_matches_reference(w, torch.tensor([1.0, 0.01]))


def test_quantize_nvfp4_matches_the_reference_on_odd_layouts(small_chunks):
    w = gaussian(2, 48, 40, seed=26)
    assert_nvfp4_matches_reference(w.transpose(-1, -2))  # not contiguous
    assert_nvfp4_matches_reference(gaussian(0, 32, seed=27), torch.tensor(1.0))  # no rows
    with pytest.raises(ValueError, match="multiple of 16"):
        quantize_nvfp4(gaussian(4, 40, seed=29))


def test_quantizers_take_float8_weights_as_their_float32_values():
    """Beyond the reference, which has no absolute maximum for float8 tensors."""
    w = gaussian(6, 32, seed=28).to(torch.float8_e4m3fn)
    assert torch.equal(quantize_nvfp4(w).packed, quantize_nvfp4(w.float()).packed)
    assert torch.equal(quantize_fp8(w).q.view(torch.uint8), quantize_fp8(w.float()).q.view(torch.uint8))


def test_quantize_nvfp4_matches_the_reference_at_the_default_chunk_sizes():
    assert_nvfp4_matches_reference(gaussian(2, 704, 256, seed=30) * torch.tensor([1e-3, 30.0]).view(2, 1, 1))
    assert_fp8_matches_reference(gaussian(2, 704, 256, seed=31), 128)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("group", [None, 128, 32, 7, 300])
def test_quantize_fp8_matches_the_reference(small_chunks, group, dtype):
    assert_fp8_matches_reference(gaussian(37, 200, seed=31, dtype=dtype), group)  # ragged last group unless 7 | 200
    assert_fp8_matches_reference(tie_heavy(3, 11, 96, seed=32, dtype=dtype), group)
    assert_fp8_matches_reference(gaussian(1, 16, seed=33, dtype=dtype), group)
    assert_fp8_matches_reference(gaussian(2, 9, 64, seed=34, dtype=dtype).transpose(-1, -2), group)
