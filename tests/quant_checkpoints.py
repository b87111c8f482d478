"""Quantized copies of a full-precision checkpoint, written in each published on-disk dialect.

The layouts follow the quant-formats notes (§3–4): compressed-tensors and ModelOpt name their tensors
differently, store experts one by one, and keep the router, embeddings, norms and self-conditioning unquantized.
Values come from dgemma_kernels' quantizers, so a load of these files can be compared with quantize-at-load.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from dgemma_kernels import quantize_fp8, quantize_nvfp4
from safetensors.torch import load_file, save_file

BLOCK = 128
Tensors = dict[str, torch.Tensor]


def _fp8_block(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """128×128 block absmax FP8 (DeepSeek / compressed-tensors FP8_BLOCK): q [N, K], scale [N/128, K/128]."""
    N, K = w.shape
    padded = torch.nn.functional.pad(w.float(), (0, -K % BLOCK, 0, -N % BLOCK))
    blocks = padded.unflatten(0, (-1, BLOCK)).unflatten(2, (-1, BLOCK))  # [Nb, 128, Kb, 128]
    scale = (blocks.abs().amax(dim=(1, 3)) / 448.0).clamp(min=1e-12)
    q = (blocks / scale[:, None, :, None]).flatten(2).flatten(0, 1)[:N, :K].to(torch.float8_e4m3fn)
    return q, scale


def fp8_channel_bf16_scale(w: torch.Tensor) -> Tensors:
    # compressed-tensors keeps scales in the model dtype: quantize against the bf16-rounded scale.
    scale = (w.float().abs().amax(-1, keepdim=True) / 448.0).to(torch.bfloat16)
    return {"weight": (w.float() / scale.float()).to(torch.float8_e4m3fn), "weight_scale": scale}


def fp8_tensor(w: torch.Tensor) -> Tensors:
    scale = (w.float().abs().amax() / 448.0).reshape(1)
    return {"weight": (w.float() / scale).to(torch.float8_e4m3fn), "weight_scale": scale, "input_scale": scale.clone()}


def fp8_channel_fp32(w: torch.Tensor) -> Tensors:
    q = quantize_fp8(w)
    return {"weight": q.q, "weight_scale": q.scale.reshape(-1)}  # ModelOpt FP8_PER_CHANNEL_PER_TOKEN: [N]


def fp8_block_ct(w: torch.Tensor) -> Tensors:
    q, scale = _fp8_block(w)
    return {"weight": q, "weight_scale": scale.to(torch.bfloat16).float()}


def fp8_block_modelopt(w: torch.Tensor) -> Tensors:
    q, scale = _fp8_block(w)
    return {"weight": q, "weight_scale": scale[:, None, :, None]}  # FP8_PB_WO keeps singleton axes


def fp8_block_inv(w: torch.Tensor) -> Tensors:
    q, scale = _fp8_block(w)
    return {"weight": q, "weight_scale_inv": scale}  # multiplied, despite the name


def nvfp4_modelopt(w: torch.Tensor, global_scale: torch.Tensor | None = None) -> Tensors:
    q = quantize_nvfp4(w, global_scale)
    return {
        "weight": q.packed,
        "weight_scale": q.block_scale,
        "weight_scale_2": q.global_scale[0].reshape(()),
        "input_scale": torch.tensor(0.01),
    }


def nvfp4_ct(w: torch.Tensor, global_scale: torch.Tensor | None = None) -> Tensors:
    q = quantize_nvfp4(w, global_scale)
    return {
        "weight_packed": q.packed,
        "weight_scale": q.block_scale,
        "weight_global_scale": (1.0 / q.global_scale[0]).reshape(1),  # stored inverted
        "input_global_scale": torch.tensor([100.0]),
    }


CT_FP8 = {"quant_method": "compressed-tensors", "format": "float-quantized"}
# dialect -> (per-linear writer, config.json quantization_config, hf_quant_config.json or None)
DIALECTS: dict[str, tuple[Callable[..., Tensors], dict, dict | None]] = {
    "ct-fp8-channel": (
        fp8_channel_bf16_scale,
        {"quant_method": "compressed-tensors", "format": "float-quantized"},
        None,
    ),
    "ct-fp8-tensor": (fp8_tensor, CT_FP8, None),
    "ct-fp8-block": (fp8_block_ct, CT_FP8, None),
    "ct-nvfp4": (nvfp4_ct, {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"}, None),
    "modelopt-fp8-channel": (
        fp8_channel_fp32,
        {"quant_method": "modelopt", "quant_algo": "FP8_PER_CHANNEL_PER_TOKEN"},
        {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "FP8_PER_CHANNEL_PER_TOKEN"}},
    ),
    "modelopt-fp8-block": (fp8_block_modelopt, {"quant_method": "modelopt", "quant_algo": "FP8_PB_WO"}, None),
    "modelopt-nvfp4": (
        nvfp4_modelopt,
        {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16},
        {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4", "group_size": 16}},
    ),
    "fp8-block-inv": (fp8_block_inv, {"quant_method": "fp8", "weight_block_size": [128, 128]}, None),
}


def _is_dense_linear(name: str) -> bool:
    return name.endswith("_proj.weight") and (".self_attn." in name or ".mlp." in name)


def write_quantized(src: Path, dst: Path, dialect: str, dense: bool = True) -> Path:
    """A copy of the checkpoint in `src` with its experts (and, if `dense`, attention and dense MLP) quantized."""
    writer, quant_config, hf_quant = DIALECTS[dialect]
    dst.mkdir(parents=True, exist_ok=True)
    source = load_file(src / "model.safetensors")
    out: Tensors = {}
    for name, tensor in source.items():
        if name.endswith("experts.gate_up_proj"):
            base, half = name.removesuffix(".gate_up_proj"), tensor.shape[1] // 2
            for e, fused in enumerate(tensor):
                # One NVFP4 global scale for gate and up (ModelOpt takes amax over the fused matrix).
                shared = {"global_scale": quantize_nvfp4(fused).global_scale[0]} if "nvfp4" in dialect else {}
                for proj, rows in (("gate_proj", fused[:half]), ("up_proj", fused[half:])):
                    out.update({f"{base}.{e}.{proj}.{k}": v for k, v in writer(rows, **shared).items()})
        elif name.endswith("experts.down_proj"):
            base = name.removesuffix(".down_proj")
            for e, w in enumerate(tensor):
                out.update({f"{base}.{e}.down_proj.{k}": v for k, v in writer(w).items()})
        elif dense and _is_dense_linear(name):
            out.update({f"{name.removesuffix('.weight')}.{k}": v for k, v in writer(tensor).items()})
        else:
            out[name] = tensor
    save_file({k: v.contiguous() for k, v in out.items()}, dst / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = quant_config
    (dst / "config.json").write_text(json.dumps(config))
    if hf_quant is not None:
        (dst / "hf_quant_config.json").write_text(json.dumps(hf_quant))
    for extra in ("generation_config.json", "tokenizer.json"):
        if (src / extra).exists():
            (dst / extra).write_bytes((src / extra).read_bytes())
    return dst
