"""Safetensors checkpoints: the tensors a config implies, validated before anything is allocated.

Checkpoint keys follow transformers' `save_pretrained` (§2.3): the shared text weights live under
`model.decoder.*`; the encoder contributes only its own `layer_scalar`s; vision weights are skipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .config import TextConfig
from .errors import CheckpointError

DECODER = "model.decoder."
ENCODER_LAYERS = "model.encoder.language_model.layers."
SKIPPED_PREFIXES = ("model.encoder.vision_tower.", "model.encoder.embed_vision.", "lm_head.")


def expected_shapes(config: TextConfig) -> dict[str, tuple[int, ...]]:
    """Every text tensor a checkpoint of this config must hold, by its checkpoint name."""
    H, V, Id, E, Ie = (
        config.hidden_size,
        config.vocab_size,
        config.intermediate_size,  # dense MLP width
        config.num_experts,
        config.moe_intermediate_size,  # expert width
    )
    shapes: dict[str, tuple[int, ...]] = {
        f"{DECODER}embed_tokens.weight": (V, H),
        f"{DECODER}norm.weight": (H,),
        f"{DECODER}self_conditioning.pre_norm.weight": (H,),
        f"{DECODER}self_conditioning.gate_proj.weight": (Id, H),
        f"{DECODER}self_conditioning.up_proj.weight": (Id, H),
        f"{DECODER}self_conditioning.down_proj.weight": (H, Id),
    }
    for i, spec in enumerate(config.layers):
        p = f"{DECODER}layers.{i}."
        q_width, kv_width = config.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        layer = {
            "input_layernorm.weight": (H,),
            "self_attn.q_proj.weight": (q_width, H),
            "self_attn.k_proj.weight": (kv_width, H),
            "self_attn.o_proj.weight": (H, q_width),
            "self_attn.q_norm.weight": (spec.head_dim,),
            "self_attn.k_norm.weight": (spec.head_dim,),
            "post_attention_layernorm.weight": (H,),
            "pre_feedforward_layernorm.weight": (H,),
            "mlp.gate_proj.weight": (Id, H),
            "mlp.up_proj.weight": (Id, H),
            "mlp.down_proj.weight": (H, Id),
            "post_feedforward_layernorm_1.weight": (H,),
            "router.proj.weight": (E, H),
            "router.scale": (H,),
            "router.per_expert_scale": (E,),
            "pre_feedforward_layernorm_2.weight": (H,),
            "experts.gate_up_proj": (E, 2 * Ie, H),
            "experts.down_proj": (E, H, Ie),
            "post_feedforward_layernorm_2.weight": (H,),
            "post_feedforward_layernorm.weight": (H,),
            "layer_scalar": (1,),
        }
        if spec.has_v_proj:
            layer["self_attn.v_proj.weight"] = (kv_width, H)
        shapes.update({p + name: shape for name, shape in layer.items()})
        shapes[f"{ENCODER_LAYERS}{i}.layer_scalar"] = (1,)
    return shapes


def module_name(checkpoint_name: str) -> str:
    """Checkpoint name -> parameter name in `model.DiffusionGemma` (one shared stack, two scalar sets)."""
    if checkpoint_name.startswith(ENCODER_LAYERS):
        index = checkpoint_name[len(ENCODER_LAYERS) :].split(".")[0]
        return f"layers.{index}.encoder_scalar"
    return checkpoint_name[len(DECODER) :]


def shard_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: the index's shards, or the single model.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: malformed shard index ({exc})") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
    elif (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]
    elif any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise CheckpointError(f"{folder}: only pickled weights (.bin/.pt); dgemma loads safetensors only")
    else:
        raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise CheckpointError(f"{folder}: missing weight file(s) {', '.join(missing)}")
    return files


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path.name}: not a readable safetensors file ({exc})") from None


def read_header(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Tensor name -> (file, shape), from the headers only."""
    found: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for path in files:
        with _open(path) as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                found[name] = (path, tuple(handle.get_slice(name).get_shape()))
    return found


def validate(found: dict[str, tuple[Path, tuple[int, ...]]], expected: dict[str, tuple[int, ...]]) -> None:
    """One error listing every missing, unexpected and mis-shaped tensor."""
    text = {n: v for n, v in found.items() if not n.startswith(SKIPPED_PREFIXES)}
    missing = sorted(set(expected) - set(text))
    unexpected = sorted(set(text) - set(expected))
    misshaped = [
        f"{n} {list(text[n][1])} (expected {list(shape)})"
        for n, shape in expected.items()
        if n in text and text[n][1] != shape
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            problems.append(f"{len(names)} {label}: {shown}")
    if problems:
        raise CheckpointError("checkpoint does not match config.json: " + "; ".join(problems))


def iter_tensors(
    found: dict[str, tuple[Path, tuple[int, ...]]],
    names: list[str],
    device: torch.device,
    dtype: torch.dtype,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Memory-mapped reads, converted one tensor at a time straight onto the target device and dtype."""
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(found[name][0], []).append(name)
    for path, file_names in by_file.items():
        with _open(path) as handle:
            for name in file_names:
                try:
                    tensor = handle.get_tensor(name)
                except (SafetensorError, OSError) as exc:
                    raise CheckpointError(f"{path.name}: cannot read {name} ({exc})") from None
                yield name, tensor.to(device=device, dtype=dtype)


def load_state(folder: Path, config: TextConfig, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Validate the checkpoint against the config, then read it as `module name -> tensor`."""
    found = read_header(shard_files(Path(folder)))
    expected = expected_shapes(config)
    validate(found, expected)
    return {module_name(n): t for n, t in iter_tensors(found, list(expected), device, dtype)}


def parameter_counts(config: TextConfig) -> tuple[int, int]:
    """(total, active per token) text parameters; only K of the E experts run for a token."""
    shapes = expected_shapes(config)
    total = sum(math.prod(s) for s in shapes.values())
    experts = sum(math.prod(s) for n, s in shapes.items() if ".experts." in n)
    inactive = experts * (config.num_experts - config.top_k_experts) // config.num_experts
    return total, total - inactive
