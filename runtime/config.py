"""Read a Hugging Face DiffusionGemma folder's config.json and generation_config.json.

The released config carries `global_head_dim` / `num_global_key_value_heads`, while a config saved by
transformers carries a sparse `per_layer_config` instead; both resolve to the same `LayerSpec`s (§1.3).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError, OptionError, UnsupportedModelError

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


_REQUIRED: Any = object()  # `Fields` default: the field must be given


def _shown(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:39] + "…"


class Fields:
    """One JSON object of a model's config file, read field by field: a value of the wrong type or out of range is
    one CheckpointError naming the file and the field (`config.json: text_config.head_dim must be ...`). A missing
    or null field takes its default (the configs' convention: null means 'the default')."""

    def __init__(self, data: object, file: str, where: str = "") -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise CheckpointError(f"{file}: {where.rstrip('.')} must be a JSON object, not {_shown(data)}")
        self.data: dict[str, Any] = data
        self.file, self.where = file, where

    def error(self, key: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.file}: {self.where}{key} {problem}")

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self.data.get(key)
        if value is None:
            if default is _REQUIRED:
                raise self.error(key, "is missing")
            return default
        return value

    def integer(self, key: str, default: Any = _REQUIRED, low: int = 1) -> int:
        value = self.get(key, default)
        # bool is an int to Python, and 16.0 is how some writers spell 16
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole:
            raise self.error(key, f"must be a whole number, not {_shown(value)}")
        if value < low:
            raise self.error(key, f"must be at least {low}, not {_shown(value)}")
        return int(value)

    def number(self, key: str, default: Any = _REQUIRED, positive: bool = False) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.error(key, f"must be a finite number, not {_shown(value)}")
        if positive and value <= 0:
            raise self.error(key, f"must be greater than 0, not {_shown(value)}")
        return float(value)

    def token_ids(self, key: str, default: Any = _REQUIRED) -> tuple[int, ...]:
        """A token id or a non-empty list of them."""
        value = self.get(key, default)
        ids = value if isinstance(value, list) else [value]
        if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
            raise self.error(key, f"must be a token id or a list of them, not {_shown(value)}")
        return tuple(ids)

    def section(self, key: str) -> Fields:
        return Fields(self.data.get(key), self.file, f"{self.where}{key}.")


def _rope_spec(rope: Fields) -> RopeSpec:
    kind = rope.get("rope_type", "default")
    if kind not in ("default", "proportional"):
        raise UnsupportedModelError(f"config.json: unsupported {rope.where}rope_type {kind!r}")
    factor = 1.0
    if kind == "proportional":
        factor = rope.number("partial_rotary_factor", 1.0, positive=True)
        if factor > 1:
            raise rope.error("partial_rotary_factor", f"must be at most 1, not {_shown(factor)}")
    return RopeSpec(theta=rope.number("rope_theta", positive=True), partial_rotary_factor=factor)


DEFAULT_ROPE = {
    SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
    FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
}


def _layer_specs(text: Fields) -> tuple[LayerSpec, ...]:
    n = text.integer("num_hidden_layers")
    types = text.get("layer_types", None) or ([SLIDING] * 5 + [FULL]) * (n // 6 + 1)
    if not isinstance(types, list) or len(types) < n:
        raise text.error("layer_types", f"must be a list of {n} layer types (num_hidden_layers), not {_shown(types)}")
    types = types[:n]
    types[-1] = FULL  # the reference forces the last layer to full attention
    rope = text.section("rope_parameters") if text.data.get("rope_parameters") else Fields(DEFAULT_ROPE, "")
    head_dim = text.integer("head_dim", 256)
    kv_heads = text.integer("num_key_value_heads", 4)
    per_layer = text.section("per_layer_config")
    overrides: dict[int, Fields] = {}
    for key in per_layer.data:
        if not str(key).isdigit():
            raise per_layer.error(key, "is not a layer number")
        overrides[int(key)] = per_layer.section(key)
    global_override = {"head_dim": text.integer("global_head_dim", 512)}
    if text.data.get("num_global_key_value_heads") is not None:
        global_override["num_key_value_heads"] = text.integer("num_global_key_value_heads")
    specs = []
    for i, kind in enumerate(types):
        if kind not in (SLIDING, FULL):
            raise UnsupportedModelError(f"config.json: unsupported layer type {kind!r} in text_config.layer_types[{i}]")
        if i in overrides:
            own = overrides[i]
        elif kind == FULL and not overrides:
            own = Fields(global_override, "config.json", "text_config.")
        else:
            own = Fields({}, "config.json")
        if kind not in rope.data:
            raise rope.error(kind, "is missing")
        specs.append(
            LayerSpec(
                is_sliding=kind == SLIDING,
                head_dim=own.integer("head_dim", head_dim),
                num_kv_heads=own.integer("num_key_value_heads", kv_heads),
                rope=_rope_spec(rope.section(kind)),
            )
        )
    return tuple(specs)


def parse_config(raw: dict[str, Any]) -> TextConfig:
    """Validate the architecture and every field the runtime reads, and derive the per-layer geometry."""
    architectures = raw.get("architectures")
    found = raw.get("model_type") or (
        architectures[0] if isinstance(architectures, list) and architectures else "nothing"
    )
    if raw.get("model_type") != "diffusion_gemma":
        raise UnsupportedModelError(
            f"this is not a DiffusionGemma checkpoint: config.json says model_type {found!r}, "
            "expected 'diffusion_gemma'"
        )
    top = Fields(raw, "config.json")
    text = top.section("text_config")
    if text.data.get("use_bidirectional_attention") == "all":
        raise UnsupportedModelError("use_bidirectional_attention='all' (bidirectional encoder) is not supported")
    layers = _layer_specs(text)
    heads = text.integer("num_attention_heads", 8)
    if any(heads % spec.num_kv_heads for spec in layers):
        raise UnsupportedModelError("config.json: text_config.num_attention_heads is not a multiple of the KV heads")
    experts = text.integer("num_experts")
    top_k = text.integer("top_k_experts")
    if top_k > experts:
        raise text.error("top_k_experts", f"must be at most num_experts ({experts}), not {top_k}")
    vocab = text.integer("vocab_size", 262144)
    pad = text.integer("pad_token_id", 0, low=0)
    if pad >= vocab:
        raise text.error("pad_token_id", f"must be below vocab_size ({vocab}), not {pad}")
    capped = text.data.get("final_logit_softcapping", 30.0) is not None  # null turns softcapping off
    softcap = text.number("final_logit_softcapping", 30.0, positive=True) if capped else None
    return TextConfig(
        vocab_size=vocab,
        hidden_size=text.integer("hidden_size", 2304),
        intermediate_size=text.integer("intermediate_size", 9216),
        moe_intermediate_size=text.integer("moe_intermediate_size"),
        num_experts=experts,
        top_k_experts=top_k,
        num_layers=len(layers),
        num_heads=heads,
        sliding_window=text.integer("sliding_window", 512),
        rms_norm_eps=text.number("rms_norm_eps", 1e-6, positive=True),
        final_logit_softcapping=softcap,
        canvas_length=top.integer("canvas_length", 256),
        max_position_embeddings=text.integer("max_position_embeddings", 131072),
        pad_token_id=pad,
        layers=layers,
    )


def parse_generation_config(raw: dict[str, Any], model_raw: dict[str, Any]) -> GenerationDefaults:
    """Merge generation_config.json over the reference built-ins; nulls mean 'use the default'. Each value must
    be in its option's range (`OPTION_RANGES`), or the checkpoint could never generate with its own defaults."""
    from .options import OPTION_RANGES  # options imports this module

    base = GenerationDefaults()
    gen = Fields(raw, "generation_config.json")
    model = Fields(model_raw, "config.json")
    model_text = model.section("text_config")
    if gen.data.get("eos_token_id") is not None:
        eos_ids = gen.token_ids("eos_token_id")
    elif model_raw.get("eos_token_id") is not None:
        eos_ids = model.token_ids("eos_token_id")
    else:
        eos_ids = model_text.token_ids("eos_token_id", 1)
    defaults = GenerationDefaults(
        max_denoising_steps=gen.integer("max_denoising_steps", base.max_denoising_steps),
        t_min=gen.number("t_min", base.t_min),
        t_max=gen.number("t_max", base.t_max),
        entropy_bound=gen.section("sampler_config").number("entropy_bound", base.entropy_bound),
        stability_threshold=gen.integer("stability_threshold", base.stability_threshold, low=0),
        confidence_threshold=gen.number("confidence_threshold", base.confidence_threshold),
        eos_token_ids=eos_ids,
        pad_token_id=gen.integer("pad_token_id", model_text.integer("pad_token_id", 0, low=0), low=0),
    )
    for name, limits in OPTION_RANGES.items():
        value = getattr(defaults, name, None)
        if value is not None:
            try:
                limits.check(name, value)
            except OptionError as exc:
                where = "sampler_config.entropy_bound" if name == "entropy_bound" else name
                raise gen.error(where, str(exc).removeprefix(name).strip()) from None
    vocab = model_text.integer("vocab_size", 262144)
    if defaults.pad_token_id >= vocab:  # the engine pads prompts with it
        raise gen.error("pad_token_id", f"must be below the vocabulary size ({vocab}), not {defaults.pad_token_id}")
    if defaults.t_min > defaults.t_max:
        raise gen.error("t_min", f"must be at most t_max ({defaults.t_max:g}), not {defaults.t_min:g}")
    return defaults


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
