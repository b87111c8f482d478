"""dgemma_kernels: matrix products over bf16, FP8 and NVFP4 weights; Triton kernels beside their references."""

from .formats import (
    E2M1_VALUES,
    Fp8Weight,
    Nvfp4Weight,
    QuantizedWeight,
    e2m1_table,
    pack_nibbles,
    quantize_fp8,
    quantize_nvfp4,
    unpack_nibbles,
)
from .moe import grouped_matmul, grouped_matmul_reference, linear

__all__ = [
    "E2M1_VALUES",
    "Fp8Weight",
    "Nvfp4Weight",
    "QuantizedWeight",
    "e2m1_table",
    "grouped_matmul",
    "grouped_matmul_reference",
    "linear",
    "pack_nibbles",
    "quantize_fp8",
    "quantize_nvfp4",
    "unpack_nibbles",
]
