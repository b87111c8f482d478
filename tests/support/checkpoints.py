"""Tiny random DiffusionGemma checkpoints written by transformers, the test oracle (§6 of the model notes)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

BASE_TEXT: dict[str, Any] = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "layer_types": ["sliding_attention", "full_attention"],
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "global_head_dim": 32,
    "num_global_key_value_heads": 1,
    "num_experts": 4,
    "top_k_experts": 2,
    "moe_intermediate_size": 32,
    "sliding_window": 8,
    "max_position_embeddings": 1024,
    "use_bidirectional_attention": "vision",
}
TINY_VISION: dict[str, Any] = {
    "model_type": "gemma4_vision",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 16,
}


@dataclass
class TinySpec:
    text: dict[str, Any] = field(default_factory=dict)  # overrides of BASE_TEXT
    canvas_length: int = 16
    seed: int = 0
    perturb: bool = True  # non-unit norms, router scales and distinct encoder/decoder layer scalars
    embed_scale: float = 1.0  # >1 makes a confident model, so early stopping fires
    generation: dict[str, Any] = field(default_factory=dict)  # written into generation_config.json

    def config_dict(self) -> dict[str, Any]:
        text = copy.deepcopy(BASE_TEXT) | self.text
        return {
            "canvas_length": self.canvas_length,
            "image_token_id": text["vocab_size"] - 12,
            "boi_token_id": text["vocab_size"] - 11,
            "eoi_token_id": text["vocab_size"] - 10,
            "text_config": text,
            "vision_config": TINY_VISION,
        }


def build_reference(spec: TinySpec):
    """The transformers model for a spec, with deterministic random weights."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    torch.manual_seed(spec.seed)
    model = DiffusionGemmaForBlockDiffusion(DiffusionGemmaConfig(**spec.config_dict())).eval()
    generator = torch.Generator().manual_seed(spec.seed + 1)
    with torch.no_grad():
        model.model.decoder.embed_tokens.weight.mul_(spec.embed_scale)
        if spec.perturb:
            for name, tensor in model.model.decoder.named_parameters():
                if name.endswith(("norm.weight", "norm_1.weight", "norm_2.weight", "router.scale", "per_expert_scale")):
                    tensor.copy_(1.0 + 0.3 * torch.randn(tensor.shape, generator=generator))
            for i, layer in enumerate(model.model.decoder.layers):
                layer.layer_scalar.fill_(0.9 + 0.05 * i)
            for i, layer in enumerate(model.model.encoder.language_model.layers):
                layer.layer_scalar.fill_(1.1 - 0.05 * i)
    return model


def write_checkpoint(spec: TinySpec, folder: Path) -> Path:
    """Save the reference model as a Hugging Face folder, with `spec.generation` in generation_config.json."""
    build_reference(spec).save_pretrained(folder)
    if spec.generation:
        path = folder / "generation_config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | spec.generation))
    return folder


def load_reference(folder: Path):
    """The oracle, read back from the same folder our runtime reads."""
    from transformers import DiffusionGemmaForBlockDiffusion

    return DiffusionGemmaForBlockDiffusion.from_pretrained(folder).eval()


TOKENIZER = Path(__file__).resolve().parents[2] / "dgemma_cli" / "builtin" / "dgemma-tiny" / "tokenizer.json"


def write_chat_checkpoint(folder: Path, seed: int = 0, canvas_length: int = 16) -> Path:
    """A random model that speaks dgemma-tiny's tokenizer: enough for every CLI path, in a fraction of a second."""
    spec = TinySpec(
        text={"vocab_size": 2688},
        canvas_length=canvas_length,
        seed=seed,
        generation={"eos_token_id": [1, 106, 50], "pad_token_id": 0, "max_denoising_steps": 8},
    )
    write_checkpoint(spec, folder)
    (folder / "tokenizer.json").write_bytes(TOKENIZER.read_bytes())
    return folder
