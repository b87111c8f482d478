"""dgemma_kernels: matrix products over bf16, FP8 and NVFP4 weights, and the fused elementwise chains around them;
Triton kernels beside their PyTorch references."""

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
from .fused import (
    add_rms_norm,
    combine_feed_forward,
    gelu_mul,
    rms_norm,
    rms_norm_rope,
    route,
    router_input,
    softcap_logits,
)
from .moe import experts_forward, grouped_matmul, grouped_matmul_reference, linear

__all__ = [
    "E2M1_VALUES",
    "Fp8Weight",
    "Nvfp4Weight",
    "QuantizedWeight",
    "add_rms_norm",
    "combine_feed_forward",
    "e2m1_table",
    "experts_forward",
    "gelu_mul",
    "grouped_matmul",
    "grouped_matmul_reference",
    "linear",
    "pack_nibbles",
    "quantize_fp8",
    "quantize_nvfp4",
    "rms_norm",
    "rms_norm_rope",
    "route",
    "router_input",
    "softcap_logits",
    "unpack_nibbles",
]
