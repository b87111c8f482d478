"""The entropy-bound sampler as pure functions (§4.1). Every random draw goes through an explicit generator,
in the reference's order and shapes: per canvas one `randint`; per step one `multinomial`, then one `randint`.

Axes: B batch, L canvas, V vocab.
"""

from __future__ import annotations

import torch


def temperature(step_remaining: int, max_steps: int, t_min: float, t_max: float) -> torch.Tensor:
    """Linear schedule over the steps *remaining* (N..1), computed in float32 as the reference does."""
    fraction = torch.tensor(step_remaining, dtype=torch.int32) / max_steps
    return t_min + (t_max - t_min) * fraction


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of softmax(logits) [B, L, V] -> [B, L], as torch.distributions.Categorical."""
    logp = logits - logits.logsumexp(dim=-1, keepdim=True)
    logp_clamped = torch.clamp(logp, min=torch.finfo(logp.dtype).min)
    return -(logp_clamped * torch.softmax(logp, dim=-1)).sum(-1)


def random_canvas(shape: tuple[int, int], vocab: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform noise over the whole vocabulary (there is no mask token)."""
    return torch.randint(0, vocab, shape, generator=generator, device=device)


def accept(token_entropy: torch.Tensor, entropy_bound: float) -> torch.Tensor:
    """Accept the lowest-entropy positions while the entropy of the others already accepted stays within the
    bound (sum of sorted entropies minus the current one); the lowest is always accepted. [B, L] bool."""
    sorted_entropy, order = torch.sort(token_entropy, dim=-1)
    chosen = torch.cumsum(sorted_entropy, dim=-1) - sorted_entropy <= entropy_bound
    return torch.zeros_like(chosen).scatter(-1, order, chosen)


def sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per position from probs [B, L, V] -> [B, L]."""
    B, L, V = probs.shape
    return torch.multinomial(probs.view(-1, V), num_samples=1, generator=generator).view(B, L)


def renoise(accepted: torch.Tensor, candidates: torch.Tensor, generator: torch.Generator, vocab: int) -> torch.Tensor:
    """Accepted positions take the new sample; every other position is fresh noise. Nothing is sticky."""
    noise = random_canvas(tuple(accepted.shape), vocab, generator, accepted.device)
    return torch.where(accepted, candidates, noise)


def is_confident(token_entropy: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mean entropy over the whole canvas below the threshold. [B] bool."""
    return token_entropy.mean(dim=-1) < threshold
