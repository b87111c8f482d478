"""DiffusionGemma's network: one shared text stack run in two modes (§2, §3), and the vision tower if it has one.

- `encode`: causal over new tokens, appends their K/V to the cache (prefill, finished canvases, new turns);
  images' soft tokens (from `embed_images`, the vision tower of `vision.py`) take their placeholders' place.
- `decode`: bidirectional over [visible cache ; canvas], never writes the cache; returns soft-capped logits.

Axes: B batch, S new tokens, L canvas, V vocab, H hidden, D head dim, E experts, K experts per token.
No sampling and no I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from dgemma_kernels import (
    add_rms_norm,
    combine_feed_forward,
    experts_forward,
    gelu_mul,
    linear,
    rms_norm,
    rms_norm_rope,
    route,
    router_input,
    softcap_logits,
)
from torch import nn

from .cache import KVCache, SequenceKV
from .config import LayerSpec, TextConfig
from .images import ImageError
from .layers import RMSNorm
from .vision import Vision, VisionConfig

# (k, v) of the new tokens -> (keys, values, mask) to attend over
CacheView = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


class Linear(nn.Linear):
    """A bias-free projection whose weight may also be a quantized `dgemma_kernels` weight (installed at load)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight)


class GatedMLP(nn.Module):
    """down(gelu(gate(x)) * up(x)): the dense branch of every layer and the self-conditioning MLP."""

    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, inner)
        self.up_proj = Linear(hidden, inner)
        self.down_proj = Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(gelu_mul(self.gate_proj(x), self.up_proj(x)))


def rope_inv_freq(spec: LayerSpec, device: torch.device | str | None = None) -> torch.Tensor:
    """Inverse frequencies, [D/2]; 'proportional' zeroes all but the first share of the pairs (§2.5)."""
    D = spec.head_dim
    if spec.rope.partial_rotary_factor == 1.0:
        return 1.0 / (spec.rope.theta ** (torch.arange(0, D, 2, dtype=torch.float, device=device) / D))
    rotated = int(spec.rope.partial_rotary_factor * D // 2)
    inv = 1.0 / (spec.rope.theta ** (torch.arange(0, 2 * rotated, 2, dtype=torch.int64, device=device).float() / D))
    return torch.cat([inv, inv.new_zeros(D // 2 - rotated)])


class Attention(nn.Module):
    def __init__(self, config: TextConfig, spec: LayerSpec) -> None:
        super().__init__()
        H, D = config.hidden_size, spec.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, spec.num_kv_heads, D
        self.eps = config.rms_norm_eps
        self.q_proj = Linear(H, self.num_heads * D)
        self.k_proj = Linear(H, self.num_kv_heads * D)
        self.v_proj = Linear(H, self.num_kv_heads * D) if spec.has_v_proj else None
        self.o_proj = Linear(self.num_heads * D, H)
        self.q_norm = RMSNorm(D, config.rms_norm_eps)
        self.k_norm = RMSNorm(D, config.rms_norm_eps)

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, heads, S, D], k and v [B, kv, S, D]."""
        B, S, _ = x.shape
        q = rms_norm_rope(self.q_proj(x).view(B, S, -1, self.head_dim), self.q_norm.weight, cos, sin, self.eps)
        k = self.k_proj(x).view(B, S, -1, self.head_dim)
        # Full layers have no v_proj: V is the raw K projection, normalised without weight, never rotated.
        v = self.v_proj(x).view(B, S, -1, self.head_dim) if self.v_proj is not None else k
        k = rms_norm_rope(k, self.k_norm.weight, cos, sin, self.eps)
        v = rms_norm(v, None, self.eps)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # scale=1.0: q_norm/k_norm carry the scale (§2.5).
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0, enable_gqa=True)
        B, _, S, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))


class Router(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.scale = nn.Parameter(torch.ones(config.hidden_size))
        self.per_expert_scale = nn.Parameter(torch.ones(config.num_experts))
        self.top_k, self.eps = config.top_k_experts, config.rms_norm_eps
        self.root_size = config.hidden_size**-0.5

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Routing weights [N, K] (fp32) and expert ids [N, K] for the residual h [N, H] (§2.6)."""
        scores = self.proj(router_input(h, self.scale, self.root_size, self.eps))
        return route(scores, self.top_k, self.per_expert_scale)


class Experts(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        E, H, Ie = config.num_experts, config.hidden_size, config.moe_intermediate_size
        # bf16 parameters, or quantized `dgemma_kernels` weights installed at load.
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * Ie, H))  # rows [:Ie] gate, [Ie:] up
        self.down_proj = nn.Parameter(torch.empty(E, H, Ie))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """x [N, H], routing weights/expert ids [N, K] -> [N, H] (see `dgemma_kernels.experts_forward`)."""
        return experts_forward(x, weights, experts, self.gate_up_proj, self.down_proj)


class Layer(nn.Module):
    def __init__(self, config: TextConfig, spec: LayerSpec) -> None:
        super().__init__()
        H, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = Attention(config, spec)
        self.mlp = GatedMLP(H, config.intermediate_size)
        self.router = Router(config)
        self.experts = Experts(config)
        for name in (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
            "post_feedforward_layernorm_1",
            "pre_feedforward_layernorm_2",
            "post_feedforward_layernorm_2",
        ):
            setattr(self, name, RMSNorm(H, eps))
        # Buffers in the reference, so not tied: the encoder and the decoder each have their own (§2.2).
        self.layer_scalar = nn.Parameter(torch.ones(1))
        self.encoder_scalar = nn.Parameter(torch.ones(1))

    def attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: CacheView) -> torch.Tensor:
        """Attention with its residual; `kv(k, v)` gives the keys, values and mask to attend over (the encoder
        appends to the cache, the decoder only reads it)."""
        q, k, v = self.self_attn.project(self.input_layernorm(x), cos, sin)
        keys, values, mask = kv(k, v)
        out = self.self_attn.attend(q, keys, values, mask)
        return add_rms_norm(x, out, self.post_attention_layernorm.weight, self.post_attention_layernorm.eps)

    def feed_forward(self, h: torch.Tensor, scalar: torch.Tensor) -> torch.Tensor:
        """Dense MLP and MoE in parallel, each with its own post-norm, then the layer scalar (§2.6)."""
        dense = self.mlp(self.pre_feedforward_layernorm(h))
        flat = h.reshape(-1, h.shape[-1])
        weights, experts = self.router(flat)
        moe = self.experts(self.pre_feedforward_layernorm_2(flat), weights, experts).reshape(h.shape)
        norms = (
            self.post_feedforward_layernorm_1.weight,
            self.post_feedforward_layernorm_2.weight,
            self.post_feedforward_layernorm.weight,
        )
        return combine_feed_forward(h, dense, moe, norms, scalar, self.post_feedforward_layernorm.eps)


class SelfConditioning(GatedMLP):
    """Gated MLP over the previous step's soft embeddings, added to the canvas embeddings (§2.8)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__(config.hidden_size, config.intermediate_size)
        self.pre_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.eps = config.rms_norm_eps

    def forward(self, embeds: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        # With no previous logits the signal is zero, the MLP gives exactly zero, and only post_norm remains.
        if soft is not None:
            embeds = embeds + super().forward(self.pre_norm(soft))
        return rms_norm(embeds, None, self.eps)


def image_runs(is_image: torch.Tensor) -> torch.Tensor:
    """Placeholder flags [B, S] -> [B, S, S]: query and key lie in the same run of image placeholders."""
    start = is_image & ~F.pad(is_image[:, :-1], (1, 0))
    run = torch.where(is_image, start.cumsum(-1), 0)
    return (run[:, :, None] == run[:, None, :]) & is_image[:, :, None]


def with_image_runs(view: CacheView, runs: torch.Tensor) -> CacheView:
    """The encoder's causal (or windowed) mask, opened both ways inside each image (§3.1, "vision" mode: text stays
    causal). The new tokens are the last keys of every view, so the runs [B, S, S] pad on the left to fit."""

    def kv(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        keys, values, mask = view(k, v)
        assert mask is not None  # the encoder always masks: it is causal
        runs_over_keys = F.pad(runs, (keys.shape[2] - runs.shape[-1], 0))[:, None]  # [B, 1, S, keys]
        return keys, values, mask | runs_over_keys

    return kv


class DiffusionGemma(nn.Module):
    def __init__(self, config: TextConfig, vision: VisionConfig | None = None) -> None:
        super().__init__()
        self.config = config
        # Built on the meta device, as a load does (it assigns every weight and rebuilds the RoPE buffers on the
        # target device), nothing is initialised or computed there: PyTorch's meta versions of normal_ and arange
        # import torch._dynamo, 1.3 s of every first load.
        meta = torch.get_default_device().type == "meta"
        V, H = config.vocab_size, config.hidden_size
        self.embed_tokens = nn.Embedding(V, H, _weight=torch.empty(V, H))
        if not meta:
            self.embed_tokens.reset_parameters()  # as nn.Embedding initialises itself
        self.layers = nn.ModuleList(Layer(config, spec) for spec in config.layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_conditioning = SelfConditioning(config)
        self.vision = Vision(vision) if vision is not None else None  # None: a text-only checkpoint
        for name, value in self.rope_buffers(config, "cpu" if meta else None).items():
            self.register_buffer(name, value, persistent=False)

    @staticmethod
    def rope_buffers(config: TextConfig, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Computed, never stored in checkpoints: rebuilt on the target device after a meta-device load."""
        return {f"inv_freq_{i}": rope_inv_freq(spec, device) for i, spec in enumerate(config.layers)}

    def embed_scale(self) -> torch.Tensor:
        # sqrt(H) rounded to the weight dtype: 53.0 in bf16 for the 26B model (§2.4).
        return torch.tensor(math.sqrt(self.config.hidden_size)).to(self.embed_tokens.weight.dtype)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids) * self.embed_scale()

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """cos/sin [S, D] per layer, computed in fp32 and cast to the activation dtype."""
        tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        out = []
        for i in range(len(self.layers)):
            inv_freq: torch.Tensor = getattr(self, f"inv_freq_{i}")
            key = self.config.layers[i].rope, inv_freq.shape[0]
            if key not in tables:
                freqs = positions.float()[:, None] * inv_freq[None, :]
                emb = torch.cat((freqs, freqs), dim=-1)
                tables[key] = (emb.cos().to(dtype), emb.sin().to(dtype))
            out.append(tables[key])
        return out

    def embed_images(self, pixels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (`images.preprocess`, stacked) -> their soft tokens in order [n_soft, H]."""
        if self.vision is None:
            raise ImageError("this model reads text only: its checkpoint has no vision tower")
        device = self.embed_tokens.weight.device
        return self.vision(pixels.to(device), positions.to(device))

    def encode(self, ids: torch.Tensor, cache: KVCache | SequenceKV, image_tokens: torch.Tensor | None = None) -> None:
        """Causal pass over ids [B, S] at positions cache.length.. ; appends their K/V to the cache.

        `image_tokens` [n, H] (from `embed_images`) replace the embeddings of the n image placeholders in ids, in
        order, and each image's run of placeholders attends to itself both ways.
        """
        S = ids.shape[1]
        cache.reserve(S)
        x = self.embed(ids)
        runs = None
        if image_tokens is not None:
            assert self.vision is not None  # `embed_images` made the tokens
            is_image = ids == self.vision.config.image_token_id
            placeholders = int(is_image.sum())
            if placeholders != image_tokens.shape[0]:
                raise ImageError(
                    f"the prompt holds {placeholders} image placeholders for {image_tokens.shape[0]} image tokens: "
                    "build it with Engine.prepare"
                )
            x = x.masked_scatter(is_image[..., None], image_tokens.to(x.dtype))
            runs = image_runs(is_image)
        positions = torch.arange(cache.length, cache.length + S, device=ids.device)
        for i, (layer, (cos, sin)) in enumerate(zip(self.layers, self.rope(positions, x.dtype), strict=True)):
            kv = partial(cache.encoder_kv, i)
            h = layer.attention(x, cos, sin, kv if runs is None else with_image_runs(kv, runs))
            if i == len(self.layers) - 1:
                break  # the encoder's output is never used: only the cache matters (§3.1)
            x = layer.feed_forward(h, layer.encoder_scalar)
        cache.advance(S)

    def soft_embed(self, probs: torch.Tensor) -> torch.Tensor:
        """Expected embedding under the previous step's distribution [B, L, V] -> [B, L, H] (§2.8)."""
        weight = self.embed_tokens.weight
        return torch.matmul(probs.to(weight.dtype), weight) * self.embed_scale()

    def decode(
        self,
        canvas: torch.Tensor,
        cache: KVCache | SequenceKV,
        prev_probs: torch.Tensor | None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoiser pass: canvas [B, L] over the read-only cache -> fp32 soft-capped logits [B, L, V].

        `prev_probs` is softmax of the previous step's temperature-scaled logits (None on a canvas's first step).
        `out`, a float32 [B, L, V] buffer reused from step to step, receives the logits (a fresh tensor that size
        page-faults in every step on the CPU); read the return value, which is `out` only on the PyTorch path.
        """
        L = canvas.shape[1]
        soft = None if prev_probs is None else self.soft_embed(prev_probs)
        x = self.self_conditioning(self.embed(canvas), soft)
        positions = torch.arange(cache.length, cache.length + L, device=canvas.device)
        for i, (layer, (cos, sin)) in enumerate(zip(self.layers, self.rope(positions, x.dtype), strict=True)):
            h = layer.attention(x, cos, sin, partial(cache.decoder_kv, i))
            x = layer.feed_forward(h, layer.layer_scalar)
        h, weight = self.norm(x), self.embed_tokens.weight  # the lm_head is tied to the embeddings
        if out is None:
            logits = F.linear(h, weight)
        elif out.dtype == h.dtype:
            logits = torch.matmul(h, weight.t(), out=out)
        else:
            logits = out.copy_(F.linear(h, weight))
        return softcap_logits(logits, self.config.final_logit_softcapping)
