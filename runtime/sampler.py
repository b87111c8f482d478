"""The entropy-bound sampler as pure functions (§4.1). Every random draw goes through an explicit generator,
in the reference's order and shapes: per canvas one `randint`; per step one `multinomial`, then one `randint`.

`torch.multinomial(p, 1)` is argmax(p / q) with q ~ Exp(1) drawn from the generator, one 64-bit draw per
entry, q = -log1p(-u) with u its low 53 bits scaled to [0, 1). On the CPU we draw only the raw 64-bit words
(`random_` on int64, 4x cheaper than drawing q, 1.2x cheaper than drawing u) and turn into q only the rows whose
sample is kept (the accepted positions): the generator advances exactly as the reference's does and the kept
samples are bit-identical.

On a GPU with Triton (and DGEMMA_FUSED_KERNELS not 0), `FusedStep` does a step's vocabulary-wide arithmetic
in one kernel with its own Philox noise; `ReferenceStep` is the reference's arithmetic and draws, bit for bit.

Axes: B batch, L canvas, V vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from dgemma_kernels import backend, fused


@dataclass(frozen=True)
class StepNoise:
    draws: torch.Tensor  # [B·L, V]: raw int64 words on the CPU, float32 Exp(1) samples elsewhere
    renoise: torch.Tensor  # [B, L] uniform token ids

    def exponential(self, rows: torch.Tensor) -> torch.Tensor:
        """Exp(1) noise of the given flat positions, [R, V] float32, as torch.multinomial computes it."""
        picked = self.draws[rows]
        return picked if picked.dtype == torch.float32 else (-torch.log1p(-uniform_from_bits(picked))).float()


def uniform_from_bits(words: torch.Tensor) -> torch.Tensor:
    """The float64 uniform in [0, 1) that a 64-bit draw becomes in `uniform_`: its low 53 bits over 2^53."""
    return (words & (2**53 - 1)).double().mul_(2.0**-53)


class NoiseSource:
    """Draws each step's noise from the generator into one buffer reused for a whole generation (a fresh
    [B·L, V] tensor per step costs page faults on the CPU). A `StepNoise` is valid until the next `draw()`."""

    def __init__(self, shape: tuple[int, int], vocab: int, generator: torch.Generator) -> None:
        device = generator.device
        self.shape, self.vocab, self.generator = shape, vocab, generator
        self.draws = torch.empty(
            shape[0] * shape[1], vocab, device=device, dtype=torch.int64 if device.type == "cpu" else None
        )

    def draw(self) -> StepNoise:
        if self.draws.device.type == "cpu":
            self.draws.random_(generator=self.generator)  # one 64-bit word per entry, as `uniform_` in float64
        else:
            self.draws.exponential_(1, generator=self.generator)
        return StepNoise(self.draws, random_canvas(self.shape, self.vocab, self.generator, self.draws.device))


def temperature(step_remaining: int, max_steps: int, t_min: float, t_max: float) -> torch.Tensor:
    """Linear schedule over the steps *remaining* (N..1), computed in float32 as the reference does."""
    fraction = torch.tensor(step_remaining, dtype=torch.int32) / max_steps
    return t_min + (t_max - t_min) * fraction


def floor_logits(logits: torch.Tensor, row_max: torch.Tensor) -> torch.Tensor:
    """On the CPU, raise in place every logit more than `span` below its row's maximum to that floor, so that no
    probability of the softmax is a denormal float (x86 computes those up to 100x slower: the softmax, entropy and
    self-conditioning product of a step took 3x longer). A raised logit's probability stays below
    e^-span / V ≥ the smallest normal float, so the normaliser (≥ 1) moves by less than V·e^-span ≈ 2e-27 for the
    26B vocabulary, far below its half ulp; such a token can never win a sample, and the entropy and the soft
    embedding move by as little. GPUs compute denormals at full speed: there it does nothing."""
    if logits.device.type != "cpu":
        return logits
    span = -math.log(torch.finfo(torch.float32).tiny * logits.shape[-1]) - 1.0
    return logits.clamp_(min=(row_max - span).unsqueeze(-1))


def entropy_(logits: torch.Tensor, probs: torch.Tensor, row_max: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Per-position entropy [B, L] of probs = softmax(logits) [B, L, V], computed in `logits`' own memory, which
    it overwrites, and in `scratch` (a [B, L, V] float32 buffer): fresh [B, L, V] temporaries cost more in page
    faults than in arithmetic on the CPU. Log-probabilities are logits minus their logsumexp, as the reference's
    Categorical computes them; it clamps them at the dtype's minimum to keep 0·(-inf) out, but finite logits give
    finite log-probabilities. The logsumexp is `torch.logsumexp`'s own sequence (exp of the logits less their
    maximum, summed, log, plus the maximum), bit for bit, with the row maxima already known."""
    top = row_max.unsqueeze(-1)
    logsumexp = torch.sub(logits, top, out=scratch).exp_().sum(-1, keepdim=True).log_().add_(top)
    return -logits.sub_(logsumexp).mul_(probs).sum(-1)


def random_canvas(shape: tuple[int, int], vocab: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform noise over the whole vocabulary (there is no mask token)."""
    return torch.randint(0, vocab, shape, generator=generator, device=device)


def accept(token_entropy: torch.Tensor, entropy_bound: float) -> torch.Tensor:
    """Accept the lowest-entropy positions while the entropy of the others already accepted stays within the
    bound (sum of sorted entropies minus the current one); the lowest is always accepted. [B, L] bool."""
    sorted_entropy, order = torch.sort(token_entropy, dim=-1)
    chosen = torch.cumsum(sorted_entropy, dim=-1) - sorted_entropy <= entropy_bound
    return torch.zeros_like(chosen).scatter(-1, order, chosen)


def sample(probs: torch.Tensor, noise: StepNoise, keep: torch.Tensor) -> torch.Tensor:
    """Draws from probs [B, L, V] at the positions in `keep` [B, L]; elsewhere 0 (never used)."""
    B, L, V = probs.shape
    if noise.draws.is_floating_point():
        # On an accelerator the Exp(1) noise already exists for every position: sampling all of them costs less
        # than `nonzero`, which would stop the host until the GPU catches up.
        return torch.where(keep, (probs / noise.draws.view(B, L, V)).argmax(dim=-1), 0)
    rows = keep.reshape(-1).nonzero().squeeze(1)
    picked = (probs.view(-1, V)[rows] / noise.exponential(rows)).argmax(dim=-1)
    return torch.zeros(B * L, dtype=torch.long, device=probs.device).index_copy_(0, rows, picked).view(B, L)


def renoise(accepted: torch.Tensor, candidates: torch.Tensor, noise: StepNoise) -> torch.Tensor:
    """Accepted positions take the new sample; every other position is fresh noise. Nothing is sticky."""
    return torch.where(accepted, candidates, noise.renoise)


@dataclass(frozen=True)
class Pinned:
    """Infill's fixed positions of one canvas: not the reference's sampler, a mode beside it. They start at their
    tokens and are put back after every step (never renoised, never changed); they cost no entropy, so acceptance
    spends its bound on the holes, and a canvas is confident when its holes are (their mean entropy)."""

    ids: torch.Tensor  # [L] the pinned tokens (0 where free)
    mask: torch.Tensor  # [L] bool: pinned
    free: int  # positions not pinned

    @classmethod
    def of(cls, tokens: list[int | None], device: torch.device) -> Pinned:
        """From a canvas of tokens, None where free."""
        ids = torch.tensor([0 if t is None else t for t in tokens], device=device)
        mask = torch.tensor([t is not None for t in tokens], device=device)
        return cls(ids, mask, tokens.count(None))

    def hold(self, canvas: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, self.ids, canvas)

    def entropy(self, token_entropy: torch.Tensor) -> torch.Tensor:
        return token_entropy.masked_fill(self.mask, 0.0)

    def mean_entropy(self, token_entropy: torch.Tensor) -> torch.Tensor:
        """[B] over the free positions of entropies from `entropy` (0 when nothing is free)."""
        return token_entropy.sum(-1) / max(1, self.free)


@dataclass(frozen=True)
class Scored:
    """What a step takes from the decoder's logits [B, L, V]."""

    argmax: torch.Tensor  # [B, L], the first maximum
    entropy: torch.Tensor  # [B, L]
    self_conditioning: torch.Tensor  # [B, L, V]: the probabilities fed back to the next step


class ReferenceStep:
    """The reference's step: softmax, entropy, acceptance, then a sample of the accepted positions from the
    generator's noise, in the reference's order of draws.

    Its [B, L, V] float32 tensors live in buffers made once per generation: on the CPU a fresh tensor this size
    (33 MB for a 256-token canvas over a 32k vocabulary, 268 MB over the 26B's 262k) comes from `mmap` and
    page-faults in every step, which cost as much as the softmax itself. The decoder writes its logits into
    `logits_out`. The probabilities alternate between two buffers, because a step's are read by the next step's
    decoder (self-conditioning) until it is scored."""

    def __init__(self, shape: tuple[int, int], vocab: int, generator: torch.Generator, dtype: torch.dtype) -> None:
        self.noise = NoiseSource(shape, vocab, generator)
        self.dtype = dtype  # the weights': the reference feeds back probabilities in it
        device = generator.device
        self.logits_out: torch.Tensor | None = torch.empty(*shape, vocab, device=device)
        self.probs_buffers = (torch.empty(*shape, vocab, device=device), torch.empty(*shape, vocab, device=device))
        self.scratch = torch.empty(*shape, vocab, device=device)
        self.probs: torch.Tensor | None = None

    def score(self, raw: torch.Tensor, temperature: torch.Tensor) -> Scored:
        # In place: `raw` is this step's own tensor (`logits_out`, or a CUDA graph's output buffer).
        logits = raw.div_(temperature)
        top, argmax = logits.max(dim=-1)  # argmax's first-maximum rule, at a third of its CPU time
        first, second = self.probs_buffers
        out = second if self.probs is first else first
        self.probs = torch.softmax(floor_logits(logits, top), dim=-1, dtype=torch.float32, out=out)
        fed = self._fed_back(logits, self.probs)
        return Scored(argmax, entropy_(logits, self.probs, top, self.scratch), fed)  # `logits` is spent now

    def draw(self, accepted: torch.Tensor) -> torch.Tensor:
        assert self.probs is not None
        noise = self.noise.draw()
        return renoise(accepted, sample(self.probs, noise, accepted), noise)

    def _fed_back(self, logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """The reference feeds back the scaled logits cast to the weight dtype and softmaxes them again; in
        float32 that is exactly `probs`, so the softmax is not repeated."""
        if self.dtype == torch.float32:
            return probs
        # In `scratch` (free until the entropy needs it), in place: softmax reads a row before it writes it, and
        # softmax(dtype=float32) of a half-precision input would make a fresh float32 copy of it first.
        rounded = self.scratch.copy_(logits.to(self.dtype))
        return torch.softmax(rounded, dim=-1, out=rounded).to(self.dtype)


class FusedStep:
    """The same step in one Triton kernel that reads the logits twice and writes only the fed-back
    probabilities (`dgemma_kernels.fused.sample_step`): the reference's PyTorch ops make ~5 GB of [B, L, V]
    traffic per 26B step. It samples every position before acceptance, from Philox noise seeded by one draw of
    the generator per step: reproducible under a seed, but not the reference's stream (which a GPU's
    `multinomial` never followed either)."""

    def __init__(self, shape: tuple[int, int], vocab: int, generator: torch.Generator, dtype: torch.dtype) -> None:
        self.shape, self.vocab, self.generator, self.dtype = shape, vocab, generator, dtype
        self.logits_out: torch.Tensor | None = None  # the kernel reads the lm_head's own output
        self.samples: torch.Tensor | None = None

    @staticmethod
    def available(device: torch.device) -> bool:
        return backend.on_gpu(device)

    def score(self, raw: torch.Tensor, temperature: torch.Tensor) -> Scored:
        seed = torch.randint(0, 2**62, (1,), generator=self.generator, device=raw.device)
        argmax, entropy, self.samples, fed = fused.sample_step(raw, float(temperature), seed, self.dtype)
        return Scored(argmax, entropy, fed)

    def draw(self, accepted: torch.Tensor) -> torch.Tensor:
        assert self.samples is not None
        fresh = random_canvas(self.shape, self.vocab, self.generator, accepted.device)
        return torch.where(accepted, self.samples, fresh)
