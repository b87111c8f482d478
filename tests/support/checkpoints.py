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
    # Small patches and position table (16 and 10240 by default), so the tower stays small beside the tiny text
    # model, whose size the memory tests compare across formats.
    "patch_size": 4,
    "position_embedding_size": 64,
}


@dataclass
class TinySpec:
    text: dict[str, Any] = field(default_factory=dict)  # overrides of BASE_TEXT
    canvas_length: int = 16
    seed: int = 0
    perturb: bool = True  # non-unit norms, router scales and distinct encoder/decoder layer scalars
    embed_scale: float = 1.0  # >1 makes a confident model, so early stopping fires
    generation: dict[str, Any] = field(default_factory=dict)  # written into generation_config.json
    vision: dict[str, Any] = field(default_factory=dict)  # overrides of TINY_VISION

    def config_dict(self) -> dict[str, Any]:
        text = copy.deepcopy(BASE_TEXT) | self.text
        return {
            "canvas_length": self.canvas_length,
            "image_token_id": text["vocab_size"] - 12,
            "boi_token_id": text["vocab_size"] - 11,
            "eoi_token_id": text["vocab_size"] - 10,
            "text_config": text,
            "vision_config": TINY_VISION | self.vision,
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
            perturb_vision(model.model.encoder.vision_tower, generator)
    return model


def perturb_vision(tower: torch.nn.Module, generator: torch.Generator) -> None:
    """Values the initialisation leaves trivial: norms, the position table (all ones), the standardize shift and
    scale, and clipping bounds tight enough to bite."""
    state = tower.state_dict(keep_vars=True)
    for name, tensor in state.items():
        noise = torch.randn(tensor.shape, generator=generator)
        if name.endswith("norm.weight") or name == "std_scale":
            tensor.copy_(1.0 + 0.3 * noise)
        elif name in ("std_bias", "patch_embedder.position_embedding_table"):
            tensor.copy_(0.5 * noise)
        elif name.endswith(("input_min", "input_max")):
            tensor.fill_(1.5 if name.endswith("max") else -1.5)
        elif name.endswith(("output_min", "output_max")):
            tensor.fill_(0.05 if name.endswith("max") else -0.05)


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


# Gemma 4's media tokens, added after dgemma-tiny's vocabulary so that the image ones land where TinySpec puts them
# for a 2677-token vocabulary (image = V - 12, boi = V - 11, eoi = V - 10). The processor insists on the audio ones.
MEDIA_TOKENS = ["<|image|>", "<|image>", "<image|>", "<|audio|>", "<|audio>", "<audio|>"]
VISION_VOCAB = 2677
TINY_IMAGES = {"patch_size": 4, "max_soft_tokens": 70, "pooling_kernel_size": 3}  # at most 630 patches of 4x4
VISION_CHAT_TEMPLATE = (
    # Gemma 4's chat format for what the tests send: a system turn, string or content-list turns (images before
    # text), and the thinking-off generation prompt.
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{ '<|turn>system\\n' + messages[0]['content'] | trim + '<turn|>\\n' }}"
    "{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<|image|>' }}{%- else -%}{{ part['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<turn|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|turn>model\\n<|channel>thought\\n<channel|>' }}{%- endif -%}"
)


def vision_spec(**vision: Any) -> TinySpec:
    """A chat model (dgemma-tiny's tokenizer) with a small vision tower that standardizes its soft tokens."""
    # The tiny processor settings make sides of up to 210 patches: the position table must reach that far.
    tower = {"position_embedding_size": 256, "standardize": True} | vision
    return TinySpec(
        text={"vocab_size": VISION_VOCAB},
        generation={"eos_token_id": [1, 106, 50], "pad_token_id": 0, "max_denoising_steps": 8},
        vision=tower,
    )


def write_vision_checkpoint(folder: Path, spec: TinySpec | None = None) -> Path:
    """A random model with a vision tower and the processor's files: the tokenizer with Gemma 4's media tokens,
    tokenizer_config.json naming them, processor_config.json and the chat template."""
    from tokenizers import AddedToken, Tokenizer

    write_checkpoint(spec or vision_spec(), folder)
    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in MEDIA_TOKENS])
    tokenizer.save(str(folder / "tokenizer.json"))
    names = ("image_token", "boi_token", "eoi_token", "audio_token", "boa_token", "eoa_token")
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    tokenizer_config = {
        "tokenizer_class": "TokenizersBackend",
        **specials,
        "extra_special_tokens": dict(zip(names, MEDIA_TOKENS, strict=True)),
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    processor = {
        "processor_class": "Gemma4Processor",
        "image_processor": {"image_processor_type": "Gemma4ImageProcessor", **TINY_IMAGES},
        "feature_extractor": {"feature_extractor_type": "Gemma4AudioFeatureExtractor"},
    }
    (folder / "processor_config.json").write_text(json.dumps(processor))
    (folder / "chat_template.jinja").write_text(VISION_CHAT_TEMPLATE)
    return folder


def load_reference_processor(folder: Path):
    """Gemma 4's processor for the folder, image processor on its Pillow path. `AutoProcessor` would also build the
    video processor, which needs torchvision; this is the same processor with that part left out."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer, Gemma4Processor

    class WithoutVideo(Gemma4Processor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name != "video_processor":
                return super().check_argument_for_proper_class(argument_name, argument)
            return None

    return WithoutVideo(
        feature_extractor=AutoFeatureExtractor.from_pretrained(folder),
        image_processor=AutoImageProcessor.from_pretrained(folder),
        tokenizer=AutoTokenizer.from_pretrained(folder),
        video_processor=None,
        chat_template=(folder / "chat_template.jinja").read_text(),
    )


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
