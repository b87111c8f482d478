"""Read a Hugging Face DiffusionGemma folder's config.json and generation_config.json.

The released config carries `global_head_dim` / `num_global_key_value_heads`, while a config saved by
transformers carries a sparse `per_layer_config` instead; both resolve to the same `LayerSpec`s (§1.3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError, UnsupportedModelError

SLIDING = "sliding_attention"
FULL = "full_attention"

# The text_config of google/diffusiongemma-26B-A4B-it as released (§1.2): the layout tests and the GPU benchmark
# build this model without its checkpoint.
RELEASED_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 262144,
    "hidden_size": 2816,
    "intermediate_size": 2112,
    "moe_intermediate_size": 704,
    "num_experts": 128,
    "top_k_experts": 8,
    "num_hidden_layers": 30,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 256,
    "global_head_dim": 512,
    "num_global_key_value_heads": 2,
    "layer_types": ([SLIDING] * 5 + [FULL]) * 5,
    "sliding_window": 1024,
    "max_position_embeddings": 262144,
    "final_logit_softcapping": 30.0,
    "use_bidirectional_attention": "vision",
    "rope_parameters": {
        SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
        FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
    },
}


@dataclass(frozen=True)
class RopeSpec:
    theta: float
    partial_rotary_factor: float  # 1.0 for "default"; "proportional" rotates only this share of the pairs


@dataclass(frozen=True)
class LayerSpec:
    is_sliding: bool
    head_dim: int
    num_kv_heads: int
    rope: RopeSpec

    @property
    def has_v_proj(self) -> bool:
        # Full-attention layers build V from the raw K projection (§2.5).
        return self.is_sliding


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_experts: int
    top_k_experts: int
    num_layers: int
    num_heads: int
    sliding_window: int
    rms_norm_eps: float
    final_logit_softcapping: float | None
    canvas_length: int
    max_position_embeddings: int
    pad_token_id: int
    layers: tuple[LayerSpec, ...]


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampler defaults from generation_config.json, falling back to the reference's built-ins (§1.5)."""

    max_denoising_steps: int = 48
    t_min: float = 0.4
    t_max: float = 0.8
    entropy_bound: float = 0.1
    stability_threshold: int = 1
    confidence_threshold: float = 0.005
    eos_token_ids: tuple[int, ...] = (1,)
    pad_token_id: int = 0


def read_json(path: Path) -> dict[str, Any]:
    """A model folder's JSON file as an object; anything else is one CheckpointError naming the file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: no {path.name} (is this a Hugging Face model folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data


def _rope_spec(params: dict[str, Any]) -> RopeSpec:
    kind = params.get("rope_type", "default")
    if kind not in ("default", "proportional"):
        raise UnsupportedModelError(f"unsupported RoPE type {kind!r}")
    factor = float(params.get("partial_rotary_factor", 1.0)) if kind == "proportional" else 1.0
    return RopeSpec(theta=float(params["rope_theta"]), partial_rotary_factor=factor)


def _layer_specs(text: dict[str, Any]) -> tuple[LayerSpec, ...]:
    n = int(text["num_hidden_layers"])
    types = list(text.get("layer_types") or ([SLIDING] * 5 + [FULL]) * (n // 6 + 1))[:n]
    types[-1] = FULL  # the reference forces the last layer to full attention
    rope = text.get("rope_parameters") or {
        SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
        FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
    }
    head_dim = int(text.get("head_dim", 256))
    kv_heads = int(text.get("num_key_value_heads", 4))
    overrides = {int(k): v for k, v in (text.get("per_layer_config") or {}).items()}
    global_override: dict[str, Any] = {"head_dim": int(text.get("global_head_dim", 512))}
    if text.get("num_global_key_value_heads") is not None:
        global_override["num_key_value_heads"] = int(text["num_global_key_value_heads"])

    specs = []
    for i, kind in enumerate(types):
        if kind not in (SLIDING, FULL):
            raise UnsupportedModelError(f"unsupported layer type {kind!r} in layer {i}")
        if i in overrides:
            own = overrides[i]
        elif kind == FULL and not overrides:
            own = global_override
        else:
            own = {}
        specs.append(
            LayerSpec(
                is_sliding=kind == SLIDING,
                head_dim=int(own.get("head_dim", head_dim)),
                num_kv_heads=int(own.get("num_key_value_heads", kv_heads)),
                rope=_rope_spec(rope[kind]),
            )
        )
    return tuple(specs)


def parse_config(raw: dict[str, Any]) -> TextConfig:
    """Validate the architecture and derive the per-layer geometry."""
    found = raw.get("model_type") or (raw.get("architectures") or ["nothing"])[0]
    if raw.get("model_type") != "diffusion_gemma":
        raise UnsupportedModelError(
            f"this is not a DiffusionGemma checkpoint: config.json says model_type {found!r}, "
            "expected 'diffusion_gemma'"
        )
    text = raw.get("text_config") or {}
    if text.get("use_bidirectional_attention") == "all":
        raise UnsupportedModelError("use_bidirectional_attention='all' (bidirectional encoder) is not supported")
    try:
        layers = _layer_specs(text)
        heads = int(text.get("num_attention_heads", 8))
        if any(heads % spec.num_kv_heads for spec in layers):
            raise UnsupportedModelError("num_attention_heads is not a multiple of the KV heads")
        return TextConfig(
            vocab_size=int(text.get("vocab_size", 262144)),
            hidden_size=int(text.get("hidden_size", 2304)),
            intermediate_size=int(text.get("intermediate_size", 9216)),
            moe_intermediate_size=int(text["moe_intermediate_size"]),
            num_experts=int(text["num_experts"]),
            top_k_experts=int(text["top_k_experts"]),
            num_layers=len(layers),
            num_heads=heads,
            sliding_window=int(text.get("sliding_window", 512)),
            rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
            final_logit_softcapping=text.get("final_logit_softcapping", 30.0),
            canvas_length=int(raw.get("canvas_length", 256)),
            max_position_embeddings=int(text.get("max_position_embeddings", 131072)),
            pad_token_id=int(text.get("pad_token_id", 0)),
            layers=layers,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json: missing or malformed text_config field ({exc})") from None


def parse_generation_config(raw: dict[str, Any], model_raw: dict[str, Any]) -> GenerationDefaults:
    """Merge generation_config.json over the reference built-ins; nulls mean 'use the default'."""
    base = GenerationDefaults()
    sampler = raw.get("sampler_config") or {}
    eos = raw.get("eos_token_id")
    if eos is None:
        eos = model_raw.get("eos_token_id", (model_raw.get("text_config") or {}).get("eos_token_id", 1))
    eos_ids = tuple(eos) if isinstance(eos, list) else (int(eos),)

    def pick(name: str, default: Any) -> Any:
        value = raw.get(name)
        return default if value is None else value

    return GenerationDefaults(
        max_denoising_steps=int(pick("max_denoising_steps", base.max_denoising_steps)),
        t_min=float(pick("t_min", base.t_min)),
        t_max=float(pick("t_max", base.t_max)),
        entropy_bound=float(sampler.get("entropy_bound") or base.entropy_bound),
        stability_threshold=int(pick("stability_threshold", base.stability_threshold)),
        confidence_threshold=float(pick("confidence_threshold", base.confidence_threshold)),
        eos_token_ids=eos_ids,
        pad_token_id=int(pick("pad_token_id", (model_raw.get("text_config") or {}).get("pad_token_id", 0))),
    )


def load_config(folder: Path) -> tuple[TextConfig, GenerationDefaults]:
    """config.json (required) and generation_config.json (optional) of a model folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model folder")
    raw = read_json(folder / "config.json")
    config = parse_config(raw)
    gen_path = folder / "generation_config.json"
    gen_raw = read_json(gen_path) if gen_path.exists() else {}
    return config, parse_generation_config(gen_raw, raw)
