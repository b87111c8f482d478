"""The vision tower (Gemma 4's, as DiffusionGemma ships it) and the projector into the text model's width.

patches [N, P, patch²·3] -> patch embedding + learned 2-D position table -> bidirectional encoder layers over the
real patches (axial 2-D RoPE) -> mean over k x k patch cells -> x √H_v (then an optional per-channel standardize)
-> soft tokens [n_soft, H_v] -> unit RMS, linear -> [n_soft, H], which replace the image placeholder embeddings.

Axes: N images, P patches per image (padded), D head dim, H_v vision width, H text width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from dgemma_kernels import gelu_mul, rms_norm
from torch import nn

from .config import Fields, read_json
from .errors import CheckpointError
from .images import ImageSettings, read_settings
from .layers import RMSNorm

TOWER = "model.encoder.vision_tower."
PROJECTOR = "model.encoder.embed_vision."
VISION_PREFIXES = (TOWER, PROJECTOR)


@dataclass(frozen=True)
class VisionConfig:
    """The tower's geometry (config.json's vision_config, Gemma 4's defaults where a key is absent), the prompt's
    image token ids, and the image processor's settings."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    patch_size: int
    pooling_kernel_size: int
    position_embedding_size: int
    rms_norm_eps: float
    rope_theta: float
    standardize: bool  # a learned per-channel shift and scale of the soft tokens
    clipped_linears: bool  # every linear clamps its input and output to learned bounds
    text_hidden_size: int
    image_token_id: int  # the placeholder each soft token replaces
    boi_token_id: int
    eoi_token_id: int
    images: ImageSettings


def parse_vision_config(raw: dict[str, Any], text_hidden_size: int, images: ImageSettings | None) -> VisionConfig:
    """`images`: the processor's settings, or None without a processor config (then the tower's own patch geometry
    and config.json's soft tokens per image)."""
    top = Fields(raw, "config.json")
    vision = top.section("vision_config")
    hidden, heads = vision.integer("hidden_size", 768), vision.integer("num_attention_heads", 12)
    patch, pooling = vision.integer("patch_size", 16), vision.integer("pooling_kernel_size", 3)
    if images is None:
        images = ImageSettings(patch, top.integer("vision_soft_tokens_per_image", 280), pooling)
    config = VisionConfig(
        hidden_size=hidden,
        intermediate_size=vision.integer("intermediate_size", 3072),
        num_layers=vision.integer("num_hidden_layers", 16),
        num_heads=heads,
        num_kv_heads=vision.integer("num_key_value_heads", 12),
        head_dim=vision.integer("head_dim", hidden // heads),
        patch_size=patch,
        pooling_kernel_size=pooling,
        position_embedding_size=vision.integer("position_embedding_size", 10240),
        rms_norm_eps=vision.number("rms_norm_eps", 1e-6, positive=True),
        rope_theta=vision.section("rope_parameters").number("rope_theta", 100.0, positive=True),
        standardize=bool(vision.get("standardize", False)),
        clipped_linears=bool(vision.get("use_clipped_linears", False)),
        text_hidden_size=text_hidden_size,
        image_token_id=top.integer("image_token_id", 258880, low=0),
        boi_token_id=top.integer("boi_token_id", 255999, low=0),
        eoi_token_id=top.integer("eoi_token_id", 258882, low=0),
        images=images,
    )
    if config.head_dim % 4 or heads % config.num_kv_heads:
        raise CheckpointError(
            "config.json: vision_config needs a head_dim divisible by 4 (2-D RoPE) and num_attention_heads a "
            "multiple of num_key_value_heads"
        )
    if (images.patch_size, images.pooling_kernel_size) != (config.patch_size, config.pooling_kernel_size):
        raise CheckpointError(
            f"the image processor cuts {images.patch_size}-pixel patches pooled {images.pooling_kernel_size}x, "
            f"but the vision tower expects {config.patch_size}-pixel patches pooled {config.pooling_kernel_size}x"
        )
    return config


def read_vision_config(folder: Path, text_hidden_size: int, tensor_names: set[str]) -> VisionConfig | None:
    """The vision config of a checkpoint that stores a vision tower; None for a text-only one."""
    if not any(name.startswith(VISION_PREFIXES) for name in tensor_names):
        return None
    return parse_vision_config(read_json(folder / "config.json"), text_hidden_size, read_settings(folder))


def _linear_shapes(prefix: str, out_features: int, in_features: int, clipped: bool) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {f"{prefix}.linear.weight": (out_features, in_features)}
    if clipped:
        shapes.update({f"{prefix}.{bound}": () for bound in ("input_min", "input_max", "output_min", "output_max")})
    return shapes


def vision_shapes(config: VisionConfig) -> dict[str, tuple[int, ...]]:
    """Every vision tensor a checkpoint must hold, by its checkpoint name."""
    Hv, Iv, D, clip = config.hidden_size, config.intermediate_size, config.head_dim, config.clipped_linears
    q_width, kv_width = config.num_heads * D, config.num_kv_heads * D
    shapes: dict[str, tuple[int, ...]] = {
        f"{TOWER}patch_embedder.input_proj.weight": (Hv, 3 * config.patch_size**2),
        f"{TOWER}patch_embedder.position_embedding_table": (2, config.position_embedding_size, Hv),
        f"{PROJECTOR}embedding_projection.weight": (config.text_hidden_size, Hv),
    }
    if config.standardize:
        shapes.update({f"{TOWER}std_bias": (Hv,), f"{TOWER}std_scale": (Hv,)})
    for i in range(config.num_layers):
        p = f"{TOWER}encoder.layers.{i}."
        for name, out_features, in_features in (
            ("self_attn.q_proj", q_width, Hv),
            ("self_attn.k_proj", kv_width, Hv),
            ("self_attn.v_proj", kv_width, Hv),
            ("self_attn.o_proj", Hv, q_width),
            ("mlp.gate_proj", Iv, Hv),
            ("mlp.up_proj", Iv, Hv),
            ("mlp.down_proj", Hv, Iv),
        ):
            shapes.update(_linear_shapes(p + name, out_features, in_features, clip))
        shapes.update({f"{p}self_attn.{norm}.weight": (D,) for norm in ("q_norm", "k_norm")})
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm"):
            shapes[f"{p}{norm}.weight"] = (Hv,)
        shapes[f"{p}post_feedforward_layernorm.weight"] = (Hv,)
    return shapes


def vision_module_name(checkpoint_name: str) -> str:
    """Checkpoint name -> parameter name in `DiffusionGemma` (the tower and projector live under `vision.`)."""
    if checkpoint_name.startswith(TOWER):
        return "vision.tower." + checkpoint_name[len(TOWER) :]
    return "vision.projector." + checkpoint_name[len(PROJECTOR) :]


class ClippableLinear(nn.Module):
    """A bias-free linear that, with `clipped`, clamps its input and output to learned bounds."""

    def __init__(self, in_features: int, out_features: int, clipped: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.clipped = clipped
        if clipped:
            for side in ("input", "output"):
                setattr(self, f"{side}_min", nn.Parameter(torch.tensor(-math.inf)))
                setattr(self, f"{side}_max", nn.Parameter(torch.tensor(math.inf)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.clipped:
            return self.linear(x)
        x = torch.clamp(x, self.input_min, self.input_max)
        return torch.clamp(self.linear(x), self.output_min, self.output_max)


def rotate_2d(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Axial RoPE on x [N, P, heads, D]: the first half of each head rotates by the x position, the second by the
    y position, each half rotate-half style; cos/sin [N, P, D]."""
    halves = []
    for part, c, s in zip(x.chunk(2, -1), cos.chunk(2, -1), sin.chunk(2, -1), strict=True):
        first, second = part.chunk(2, -1)
        halves.append(part * c[:, :, None] + torch.cat((-second, first), -1) * s[:, :, None])
    return torch.cat(halves, -1)


class Attention(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        Hv, D, clip = config.hidden_size, config.head_dim, config.clipped_linears
        self.head_dim, self.eps = D, config.rms_norm_eps
        self.q_proj = ClippableLinear(Hv, config.num_heads * D, clip)
        self.k_proj = ClippableLinear(Hv, config.num_kv_heads * D, clip)
        self.v_proj = ClippableLinear(Hv, config.num_kv_heads * D, clip)
        self.o_proj = ClippableLinear(config.num_heads * D, Hv, clip)
        self.q_norm = RMSNorm(D, config.rms_norm_eps)
        self.k_norm = RMSNorm(D, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        N, P, _ = x.shape
        q = rotate_2d(self.q_norm(self.q_proj(x).view(N, P, -1, self.head_dim)), cos, sin)
        k = rotate_2d(self.k_norm(self.k_proj(x).view(N, P, -1, self.head_dim)), cos, sin)
        v = rms_norm(self.v_proj(x).view(N, P, -1, self.head_dim), None, self.eps)
        # scale=1.0: q_norm and k_norm carry the scale, as in the text model.
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=1.0, enable_gqa=True
        )
        return self.o_proj(out.transpose(1, 2).reshape(N, P, -1))


class MLP(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        Hv, Iv, clip = config.hidden_size, config.intermediate_size, config.clipped_linears
        self.gate_proj = ClippableLinear(Hv, Iv, clip)
        self.up_proj = ClippableLinear(Hv, Iv, clip)
        self.down_proj = ClippableLinear(Iv, Hv, clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(gelu_mul(self.gate_proj(x), self.up_proj(x)))


class Layer(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        Hv, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(Hv, eps)
        self.post_attention_layernorm = RMSNorm(Hv, eps)
        self.pre_feedforward_layernorm = RMSNorm(Hv, eps)
        self.post_feedforward_layernorm = RMSNorm(Hv, eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Encoder(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_layers))


class PatchEmbedder(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        Hv = config.hidden_size
        self.input_proj = nn.Linear(3 * config.patch_size**2, Hv, bias=False)
        self.position_embedding_table = nn.Parameter(torch.ones(2, config.position_embedding_size, Hv))

    def forward(self, pixels: torch.Tensor, positions: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        # Pixels arrive in [0, 1]; the tower wants [-1, 1] (the processor does no normalisation).
        x = self.input_proj((2 * (pixels - 0.5)).to(self.input_proj.weight.dtype))
        at = positions.clamp(min=0)  # padding's (-1, -1) looks up row 0, then is zeroed
        table = self.position_embedding_table
        position = F.embedding(at[..., 0], table[0]) + F.embedding(at[..., 1], table[1])
        return x + torch.where(padding[..., None], 0.0, position)


class VisionTower(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        Hv = config.hidden_size
        self.patch_embedder = PatchEmbedder(config)
        self.encoder = Encoder(config)
        if config.standardize:
            self.std_bias = nn.Parameter(torch.zeros(Hv))
            self.std_scale = nn.Parameter(torch.ones(Hv))

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [N, P, D] laid out (x, x, y, y): the x angles serve the first half of each head, the y angles the
        second, each twice for rotate-half; computed in fp32 (padding's -1 too: those rows are never read)."""
        spatial = self.config.head_dim // 2
        exponents = torch.arange(0, spatial, 2, device=positions.device, dtype=torch.float) / spatial
        inv_freq = 1.0 / (self.config.rope_theta**exponents)
        angles = positions[..., None].float() * inv_freq  # [N, P, 2, D/4]
        x, y = angles[:, :, 0], angles[:, :, 1]
        emb = torch.cat((x, x, y, y), -1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def pool(
        self, x: torch.Tensor, positions: torch.Tensor, padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over each k x k cell of patches -> fp32 soft tokens [N, P/k², H_v] times √H_v, and which cells
        hold a patch [N, P/k²]. The mean is a matmul with one-hot weights, as the reference computes it."""
        k = self.config.pooling_kernel_size
        length = x.shape[1] // k**2
        at = positions.clamp(min=0)
        width = at[..., 0].max(-1, keepdim=True).values + 1  # in patches
        cell = torch.div(at, k, rounding_mode="floor")
        index = cell[..., 0] + (width // k) * cell[..., 1]
        weights = F.one_hot(index, length).float() / k**2  # [N, P, length]
        x = x.masked_fill(padding[..., None], 0.0)
        pooled = (weights.transpose(1, 2) @ x.float()).to(x.dtype)
        return pooled.float() * math.sqrt(self.config.hidden_size), (weights != 0).any(1)

    def forward(self, pixels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """pixels [N, P, patch²·3], positions [N, P, 2] -> the soft tokens of every image in order [n_soft, H_v]."""
        padding = (positions == -1).all(-1)  # [N, P]
        x = self.patch_embedder(pixels, positions, padding)
        cos, sin = self.rope(positions, x.dtype)
        # Bidirectional over each image's real patches; no mask at all when nothing is padding.
        mask = ~padding[:, None, None, :] if padding.any() else None
        for layer in self.encoder.layers:
            x = layer(x, cos, sin, mask)
        pooled, filled = self.pool(x, positions, padding)
        tokens = pooled[filled]
        if self.config.standardize:
            tokens = (tokens - self.std_bias.float()) * self.std_scale.float()  # in fp32: the bias cancels large values
        return tokens.to(x.dtype)


class Projector(nn.Module):
    """Soft tokens -> the text model's width: RMSNorm without weight, then a linear."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.embedding_projection = nn.Linear(config.hidden_size, config.text_hidden_size, bias=False)
        self.eps = config.rms_norm_eps

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding_projection(rms_norm(tokens, None, self.eps))


class Vision(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.tower = VisionTower(config)
        self.projector = Projector(config)

    def forward(self, pixels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Images -> their soft tokens in the text model's width [n_soft, H], in order."""
        return self.projector(self.tower(pixels, positions))
