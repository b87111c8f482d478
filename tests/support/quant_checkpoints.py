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


# -- compressed-tensors' own compressor, saved by transformers ---------------------------------------------------

DECODER, ENCODER_TEXT = "model.decoder.", "model.encoder.language_model."
# What llm-compressor's DiffusionGemma recipes leave in full precision (quant-formats notes §3.5).
CT_IGNORE = ["lm_head", "re:.*router.*", "re:.*self_conditioning.*", "re:.*vision.*", "re:.*embed.*"]


class _Expert(torch.nn.Module):
    """One expert as separate Linears, as llm-compressor's calibration modules split the fused 3-D experts."""

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor):
        super().__init__()
        gate, up = gate_up.chunk(2)
        self.gate_proj, self.up_proj, self.down_proj = (_linear(w) for w in (gate, up, down))


def _linear(weight: torch.Tensor) -> torch.nn.Linear:
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data.copy_(weight)
    return layer


def _calibrate(module: torch.nn.Module) -> None:
    """The weight scales an observer would set: min/max of each NVFP4 block (under one global scale) or FP8 row."""
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

    w, args = module.weight.data, module.quantization_scheme.weights
    if args.num_bits == 4:
        global_scale = generate_gparam(w.amin(), w.amax())
        blocks = w.unflatten(-1, (-1, args.group_size))
        scale, _ = calculate_qparams(blocks.amin(-1), blocks.amax(-1), args, global_scale=global_scale)
        module.weight_global_scale.data.copy_(global_scale)
    else:
        scale, _ = calculate_qparams(w.amin(-1, keepdim=True), w.amax(-1, keepdim=True), args)
    module.weight_scale.data.copy_(scale)


def write_compressed(src: Path, dst: Path, precision: str) -> Path:
    """`src` quantized (experts, attention, dense MLP) by compressed-tensors and saved as llm-compressor saves:
    `ModelCompressor.compress_model`, then transformers' `save_pretrained`. The encoder's and decoder's Linears are
    separate modules whose tied weights compress apart, so every quantized tensor is written under both
    `model.decoder.*` and `model.encoder.language_model.*`; tied full-precision tensors are written once."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, apply_quantization_config
    from compressed_tensors.quantization.quant_scheme import FP8_DYNAMIC, NVFP4A16

    from tests.support.checkpoints import load_reference

    model = load_reference(src)
    for text in (model.model.decoder, model.model.encoder.language_model):
        for layer in text.layers:
            experts = layer.experts
            layer.experts = torch.nn.ModuleList(map(_Expert, experts.gate_up_proj.data, experts.down_proj.data))
    preset = NVFP4A16 if precision == "nvfp4" else FP8_DYNAMIC
    scheme = QuantizationScheme(targets=["Linear"], **preset)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=CT_IGNORE))
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "quantization_scheme"):
                _calibrate(module)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(dst)
    compressor.update_config(dst)
    if (src / "tokenizer.json").exists():
        (dst / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    return dst


def _is_shared(rest: str) -> bool:
    """A decoder tensor (name past `model.decoder.`) the encoder ties to: all but self-conditioning and the
    per-stack layer scalars (buffers, which transformers does not tie)."""
    return not rest.startswith("self_conditioning.") and not rest.endswith("layer_scalar")


def relayout(folder: Path, layout: str) -> Path:
    """Rewrite where the shared tensors of `folder` are stored: "decoder" (one copy, under the decoder's names),
    "both" (every shared tensor under both prefixes) or "encoder" (only under the encoder's names)."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    shared = [n.removeprefix(DECODER) for n in tensors if n.startswith(DECODER) and _is_shared(n.removeprefix(DECODER))]
    for rest in shared:
        if layout == "decoder":
            tensors.pop(ENCODER_TEXT + rest, None)
        elif layout == "both":
            tensors.setdefault(ENCODER_TEXT + rest, tensors[DECODER + rest].clone())
        elif layout == "encoder":
            tensors[ENCODER_TEXT + rest] = tensors.pop(DECODER + rest)
        else:
            raise ValueError(layout)
    save_file(tensors, path, metadata={"format": "pt"})
    return folder
