"""The KV cache, preallocated once for a whole conversation.

Layout per layer: `[B, kv_heads, slots + L, head_dim]`, where the last L slots are scratch for the canvas.
- Full layers keep every position: slot = position.
- Sliding layers keep only the last W-1 positions (what the reference's dynamic cache keeps, §3.1) in a ring:
  slot = position % (W-1). Keys are stored after RoPE, so slot order does not matter to attention.
The encoder appends; the decoder writes the canvas K/V into scratch slots right after the valid ones and reads
one contiguous slice, so a denoising step allocates nothing and needs no mask (§3.2, §3.3) — unless rows of a
batch are left-padded, when the padding positions are hidden from every query, as the reference's 2-D mask does.
"""

from __future__ import annotations

import torch

from .config import TextConfig
from .errors import ContextFullError


class KVCache:
    def __init__(
        self,
        config: TextConfig,
        batch: int,
        capacity: int,
        device: torch.device,
        dtype: torch.dtype,
        padding: list[int] | None = None,
    ) -> None:
        self.config = config
        # Left padding of each row (positions below it hold no token); None when no row is padded.
        self.padding = torch.tensor(padding, device=device) if padding and any(padding) else None
        self.capacity = capacity
        self.length = 0  # positions encoded so far (T)
        self.window = config.sliding_window
        self.ring = max(1, min(capacity, config.sliding_window - 1))
        L = config.canvas_length
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for spec in config.layers:
            slots = (self.ring if spec.is_sliding else capacity) + L
            shape = (batch, spec.num_kv_heads, slots, spec.head_dim)
            self.keys.append(torch.empty(shape, device=device, dtype=dtype))
            self.values.append(torch.empty(shape, device=device, dtype=dtype))
        # Absolute position held by each ring slot (-1: empty); shared by all sliding layers.
        self.ring_positions = torch.full((self.ring,), -1, dtype=torch.long, device=device)

    def reserve(self, new_tokens: int) -> None:
        """Fail before any work if `new_tokens` more positions (plus a canvas) do not fit."""
        if self.length + new_tokens > self.capacity:
            raise ContextFullError(
                f"context is full: {self.length} + {new_tokens} tokens exceed the {self.capacity} allocated"
            )

    def _valid_ring(self) -> int:
        return min(self.length, self.ring)

    def encoder_kv(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store a chunk's K/V [B, kv, S, D]; return the keys, values and bool mask [S, keys] it attends to.

        Call `advance(S)` once all layers have run.
        """
        S, T = k.shape[2], self.length
        q_pos = torch.arange(T, T + S, device=k.device)
        if not self.config.layers[layer].is_sliding:
            self.keys[layer][:, :, T : T + S] = k
            self.values[layer][:, :, T : T + S] = v
            keys, values = self.keys[layer][:, :, : T + S], self.values[layer][:, :, : T + S]
            k_pos = torch.arange(T + S, device=k.device)
            return keys, values, self._hide_padding(k_pos[None, :] <= q_pos[:, None], k_pos, q_pos)
        n = self._valid_ring()
        keys = torch.cat([self.keys[layer][:, :, :n], k], dim=2)
        values = torch.cat([self.values[layer][:, :, :n], v], dim=2)
        k_pos = torch.cat([self.ring_positions[:n], q_pos])
        mask = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] > q_pos[:, None] - self.window)
        keep = min(S, self.ring)  # only the newest W-1 positions survive
        slots = q_pos[S - keep :] % self.ring
        self.keys[layer][:, :, slots] = k[:, :, S - keep :]
        self.values[layer][:, :, slots] = v[:, :, S - keep :]
        return keys, values, self._hide_padding(mask, k_pos, q_pos)

    def _hide_padding(self, mask: torch.Tensor, k_pos: torch.Tensor, q_pos: torch.Tensor) -> torch.Tensor:
        """[S, K] -> [B, 1, S, K] with padding keys hidden; a padding query still sees itself, so no softmax row
        is empty (its output is never read)."""
        if self.padding is None:
            return mask
        real = k_pos[None, :] >= self.padding[:, None]  # [B, K]
        mask = (mask[None] & real[:, None, :]) | (k_pos[None, None, :] == q_pos[None, :, None])
        return mask[:, None]

    def advance(self, new_tokens: int) -> None:
        T = self.length
        keep = min(new_tokens, self.ring)
        positions = torch.arange(T + new_tokens - keep, T + new_tokens, device=self.ring_positions.device)
        self.ring_positions[positions % self.ring] = positions
        self.length = T + new_tokens

    def decoder_kv(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Place the canvas K/V [B, kv, L, D] after the visible cache; return [visible ; canvas] and the padding
        mask, if any (no writes to the cache proper: the slots used are scratch or still-empty ring slots)."""
        sliding = self.config.layers[layer].is_sliding
        start = self._valid_ring() if sliding else self.length
        end = start + k.shape[2]
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        mask = None
        if self.padding is not None:
            canvas = torch.arange(self.length, self.length + k.shape[2], device=k.device)
            cached = self.ring_positions[:start] if sliding else torch.arange(start, device=k.device)
            mask = (torch.cat([cached, canvas])[None, :] >= self.padding[:, None])[:, None, None]  # [B, 1, 1, K]
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end], mask


class SequenceKV:
    """The same interface as `KVCache`, grown by concatenation instead of written in place, so gradients
    flow through it. Used for training; masks are built from absolute positions exactly as `KVCache` does."""

    def __init__(self, config: TextConfig) -> None:
        self.config = config
        self.length = 0
        self.window = config.sliding_window
        self.keys: list[torch.Tensor | None] = [None] * config.num_layers
        self.values: list[torch.Tensor | None] = [None] * config.num_layers

    def reserve(self, new_tokens: int) -> None:
        """Unbounded: nothing to check."""

    def encoder_kv(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        old_k, old_v = self.keys[layer], self.values[layer]
        keys = k if old_k is None else torch.cat([old_k, k], dim=2)
        values = v if old_v is None else torch.cat([old_v, v], dim=2)
        self.keys[layer], self.values[layer] = keys, values
        T, S = self.length, k.shape[2]
        q_pos = torch.arange(T, T + S, device=k.device)[:, None]
        k_pos = torch.arange(T + S, device=k.device)[None, :]
        mask = k_pos <= q_pos
        if self.config.layers[layer].is_sliding:
            mask &= k_pos > q_pos - self.window
        return keys, values, mask

    def advance(self, new_tokens: int) -> None:
        self.length += new_tokens

    def decoder_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or values is None:
            return k, v, None
        if self.config.layers[layer].is_sliding:
            keys, values = keys[:, :, -(self.window - 1) :], values[:, :, -(self.window - 1) :]
        return torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2), None


def cache_bytes(config: TextConfig, batch: int, capacity: int, dtype: torch.dtype) -> int:
    """Bytes `KVCache(config, batch, capacity, ...)` allocates."""
    ring = max(1, min(capacity, config.sliding_window - 1))
    element = torch.empty((), dtype=dtype).element_size()
    total = 0
    for spec in config.layers:
        slots = (ring if spec.is_sliding else capacity) + config.canvas_length
        total += 2 * batch * spec.num_kv_heads * slots * spec.head_dim * element
    return total


def step_workspace_bytes(config: TextConfig, batch: int) -> int:
    """The largest per-step buffers over [B, L, V]: float32 logits and probabilities, int64 noise words (CPU)."""
    return 6 * batch * config.canvas_length * config.vocab_size * 4
