"""The canvas loop (§4.1): encode, denoise a canvas step by step, append it, repeat. `Engine.stream()` yields
events as it goes; `Engine.generate()` drains it. All compile and device choices live here."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from dgemma_kernels.backend import describe as describe_kernels

from . import sampler
from .cache import KVCache
from .checkpoint import WeightMemory
from .config import GenerationDefaults, TextConfig
from .errors import NonFiniteError, OptionError
from .events import CanvasEvent, Event, FinalEvent, GenerationStats, StepEvent
from .graphs import GraphedDecoder
from .images import ImageSource
from .infill import Template
from .model import DiffusionGemma
from .options import GenerationOptions, ResolvedOptions
from .prompt import PreparedPrompt, prepare, prepare_follow_up
from .tokenizer import Message, TextStream, Tokenizer
from .vision import VisionConfig

# Token ids (one list, or one per row), or a prepared conversation (one row, maybe with images).
Prompt = Sequence[int] | Sequence[Sequence[int]] | PreparedPrompt


@dataclass
class Session:
    """A conversation's state: its KV cache and the last canvas, which is encoded only when the next turn
    arrives (the reference never encodes the final canvas, §7 item 24). Batch 1."""

    cache: KVCache
    pending: list[int] = field(default_factory=list)  # said by the model, not yet in the cache
    closed: bool = True  # the model's last answer ended with an EOS (else the next turn must close it)


@dataclass(frozen=True)
class GenerationResult:
    token_ids: list[int]  # row 0: generated ids through the first EOS (inclusive)
    rows: list[list[int]]  # every row, likewise
    stats: GenerationStats


class _Clock:
    """Wall time per phase; on an accelerator it synchronises first so each phase is charged honestly."""

    def __init__(self, device: torch.device) -> None:
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.totals = {"prefill": 0.0, "encode": 0.0, "decode": 0.0, "sample": 0.0}
        self.mark = time.perf_counter()

    def charge(self, phase: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.totals[phase] += now - self.mark
        self.mark = now


class Engine:
    def __init__(
        self,
        model: DiffusionGemma,
        config: TextConfig,
        defaults: GenerationDefaults,
        tokenizer: Tokenizer | None = None,
        cuda_graphs: bool = False,
        weights: WeightMemory | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.defaults = defaults
        self.tokenizer = tokenizer
        weight = model.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.decode = GraphedDecoder(model) if cuda_graphs else model.decode
        self.weights = weights  # as `load` read them from the checkpoint: for `--verbose` and `bench`

    def kernels(self) -> str:
        """Which kernels run this model here, for reports: it changes speed and, for FP8, the arithmetic."""
        return describe_kernels(self.device, self.weights.by_format if self.weights else {})

    # -- state ---------------------------------------------------------------------------------------------

    def new_session(self, context: int) -> Session:
        """A batch-1 conversation that can hold `context` tokens (prompts and answers of every turn)."""
        return Session(KVCache(self.config, 1, context, self.device, self.dtype))

    # -- prompts -------------------------------------------------------------------------------------------

    def _chat_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise OptionError("this model folder has no tokenizer.json: pass token ids instead of messages")
        return self.tokenizer

    @property
    def vision(self) -> VisionConfig | None:
        """The vision tower's config; None for a text-only model."""
        return self.model.vision.config if self.model.vision is not None else None

    def prepare(self, messages: Sequence[Message | Mapping[str, Any]], think: bool = False) -> PreparedPrompt:
        """A chat (`Message`s, or dicts with "role", "content" and optional "images": paths or bytes), rendered and
        tokenized, its images preprocessed: what `generate` and `stream` take."""
        return prepare(messages, self._chat_tokenizer(), self.vision, think)

    def prepare_follow_up(
        self, text: str, images: Sequence[ImageSource] = (), think: bool = False, closed: bool = True
    ) -> PreparedPrompt:
        """The next user turn of a session's conversation (`closed`: `Session.closed`)."""
        return prepare_follow_up(text, images, self._chat_tokenizer(), self.vision, think, closed)

    # -- generation ----------------------------------------------------------------------------------------

    def generate(self, prompt_ids: Prompt, **options: object) -> GenerationResult:
        final = None
        for event in self.stream(prompt_ids, **options):
            if isinstance(event, FinalEvent):
                final = event
        assert final is not None
        rows = [list(ids) for ids in final.token_ids]
        return GenerationResult(token_ids=rows[0], rows=rows, stats=final.stats)

    def stream(
        self,
        prompt_ids: Prompt,
        *,
        session: Session | None = None,
        options: GenerationOptions | None = None,
        **overrides: object,
    ) -> Iterator[Event]:
        """Generate from prompt ids (one list, or one list per row; shorter rows are left-padded) or a
        `PreparedPrompt` (see `prepare`); see `GenerationOptions` for the keyword options. With a `session`, only
        its pending canvas and these ids are encoded."""
        if isinstance(prompt_ids, PreparedPrompt):
            rows, prepared = _as_rows(prompt_ids.ids), prompt_ids
        else:
            rows, prepared = _as_rows(prompt_ids), None
        if session is not None and len(rows) != 1:
            raise OptionError("a session holds one conversation: pass a single prompt")
        # Without a session the prompt and the answer must fit the model's context (a session's cache has its own
        # capacity and says when it is full).
        context = None if session is not None else self.config.max_position_embeddings
        merged = (options or GenerationOptions()).merged(**overrides)
        opts = merged.resolve(self.defaults, context, max(len(row) for row in rows))
        with torch.inference_mode():
            yield from self._run(rows, opts, session, prepared)

    def _run(
        self, rows: list[list[int]], opts: ResolvedOptions, session: Session | None, prepared: PreparedPrompt | None
    ) -> Iterator[Event]:
        cfg, model, device = self.config, self.model, self.device
        B, L = len(rows), cfg.canvas_length
        # The hottest step's temperature, in float32 as every step computes it (a host tensor: no sync). Infinite,
        # it turns every logit into 0 and the answer into pad tokens, with finite numbers all along.
        if not torch.isfinite(sampler.temperature(1, 1, opts.t_min, opts.t_max)):
            raise OptionError(f"t_max {opts.t_max:g} is too large: the sampler's float32 temperature overflows")
        prefix = [(session.pending if session else []) + row for row in rows]
        P = max(len(p) for p in prefix)
        # Rows of unequal length are left-padded; positions are not shifted (the reference's convention).
        padding = [P - len(p) for p in prefix]
        prompt_tokens = sum(len(p) for p in prefix)
        prefix = [[self.defaults.pad_token_id] * pad + p for pad, p in zip(padding, prefix, strict=True)]
        # Infill: the answer's tokens as far as the template decides them (None where the sampler writes).
        template = None if opts.infill is None else self._infill_tokens(opts.infill)
        length = opts.max_new_tokens if template is None else min(opts.max_new_tokens, len(template))
        # The last canvas is never encoded, so n canvases need room for P + (n-1)·L positions.
        n_canvases = math.ceil(length / L)
        if session is None:
            cache = KVCache(cfg, B, P + (n_canvases - 1) * L, device, self.dtype, padding)
        else:
            cache = session.cache
            cache.reserve(P)
            n_canvases = min(n_canvases, (cache.capacity - cache.length - P) // L + 1)
        generator = torch.Generator(device).manual_seed(opts.seed if opts.seed is not None else secrets.randbits(63))
        # One per generation: its [B, L, V] buffers serve every canvas.
        step_kind = sampler.FusedStep if sampler.FusedStep.available(device) else sampler.ReferenceStep
        step = step_kind((B, L), cfg.vocab_size, generator, self.dtype)
        eos = torch.tensor(self.defaults.eos_token_ids, device=device)
        streams = [self._text_stream(channels=template is None) for _ in range(B)]
        clock = _Clock(device)

        # The vision tower runs once, before the prompt that holds its placeholders is encoded.
        image_tokens = None
        if prepared is not None and prepared.pixel_values is not None and prepared.image_position_ids is not None:
            image_tokens = model.embed_images(prepared.pixel_values, prepared.image_position_ids)
        model.encode(torch.tensor(prefix, device=device), cache, image_tokens)
        clock.charge("prefill")
        if session is not None:
            session.pending = []

        done = torch.zeros(B, dtype=torch.bool, device=device)  # rows that ended in an earlier canvas
        outputs: list[list[int]] = [[] for _ in range(B)]
        forwards, steps_per_canvas = 0, []
        canvas_ids = None
        for c in range(n_canvases):
            if canvas_ids is not None:
                model.encode(canvas_ids, cache)
                clock.charge("encode")
                if session is not None:
                    session.pending = []
            pinned = None
            if template is not None:
                tokens = template[c * L : (c + 1) * L]
                pinned = sampler.Pinned.of(tokens + [self.defaults.pad_token_id] * (L - len(tokens)), device)
            denoised = yield from self._denoise(c, cache, generator, step, opts, done, clock, pinned)
            canvas_ids, steps, row_forwards = denoised
            forwards += row_forwards
            steps_per_canvas.append(steps)
            # Finalise (§4.1 step 5): rows done earlier become pad; after a row's first EOS, pad.
            is_eos = torch.isin(canvas_ids, eos)
            if pinned is not None:  # the template's own end; an end token written into a hole ends nothing
                is_eos &= pinned.mask
            after_eos = (is_eos.cumsum(-1) > 0) & ~((is_eos.cumsum(-1) == 1) & is_eos)
            pad = after_eos | done[:, None]
            canvas_ids = torch.where(pad, torch.full_like(canvas_ids, self.defaults.pad_token_id), canvas_ids)
            last = c == n_canvases - 1
            newly_done = (is_eos.any(-1) | last) & ~done
            host_ids, host_eos = canvas_ids.tolist(), is_eos.tolist()
            host_done, host_new = done.tolist(), newly_done.tolist()
            for r in range(B):
                if host_done[r]:
                    continue
                cut = host_eos[r].index(True) + 1 if True in host_eos[r] else L
                # The answer's exact length: the one place it is cut, so every consumer and count agrees.
                cut = min(cut, opts.max_new_tokens - len(outputs[r]))
                ids = tuple(host_ids[r][:cut])
                outputs[r].extend(ids)
                if session is not None:  # kept current, so a stream closed early leaves a consistent state
                    session.pending, session.closed = list(ids), ids[-1] in self.defaults.eos_token_ids
                text, thinking = streams[r].feed(ids) if streams[r] else ("", "")
                yield CanvasEvent(r, c, ids, steps, text=text, thinking=thinking, done=host_new[r])
            done |= newly_done
            clock.charge("sample")
            if all(host_done[r] or host_new[r] for r in range(B)):
                break
        hit_eos = all(o and o[-1] in self.defaults.eos_token_ids for o in outputs)
        t = clock.totals
        stats = GenerationStats(
            prompt_tokens=prompt_tokens,
            generated_tokens=sum(len(o) for o in outputs),
            canvases=len(steps_per_canvas),
            decoder_forwards=forwards,
            steps_per_canvas=tuple(steps_per_canvas),
            prefill_seconds=t["prefill"],
            encode_seconds=t["prefill"] + t["encode"],
            decode_seconds=t["decode"],
            sample_seconds=t["sample"],
            total_seconds=sum(t.values()),
            finish_reason="stop" if hit_eos else "length",
        )
        yield FinalEvent(stats=stats, token_ids=tuple(tuple(o) for o in outputs))

    def _denoise(
        self,
        canvas_index: int,
        cache: KVCache,
        generator: torch.Generator,
        step: sampler.ReferenceStep | sampler.FusedStep,
        opts: ResolvedOptions,
        done: torch.Tensor,
        clock: _Clock,
        pinned: sampler.Pinned | None = None,
    ) -> Iterator[Event]:
        """Denoise one canvas, its `pinned` positions held (infill); yields step events, returns (argmax canvas
        [B, L], steps run, row forwards)."""
        B, L, V, N = (
            done.shape[0],
            self.config.canvas_length,
            self.config.vocab_size,
            opts.max_denoising_steps,
        )
        current = sampler.random_canvas((B, L), V, generator, self.device)
        if pinned is not None:
            current = pinned.hold(current)
        fixed = () if pinned is None else tuple(pinned.mask.tolist())
        argmax = current
        prev_probs: torch.Tensor | None = None  # self-conditioning input
        converged = torch.zeros(B, dtype=torch.bool, device=self.device)
        history = torch.full((opts.stability_threshold, B, L), -1, dtype=torch.long, device=self.device)
        forwards, steps = 0, 0
        any_converged = False  # host copy of converged.any(), from the previous step's transfer
        # Whether every entropy so far is finite: one NaN or infinite logit makes its position's entropy NaN. Kept on
        # the device and read once, after the canvas, so no step waits for it.
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        for remaining in range(N, 0, -1):
            active = ~(converged | done)
            raw = self.decode(current, cache, prev_probs, step.logits_out)
            clock.charge("decode")
            scored = step.score(raw, sampler.temperature(remaining, N, opts.t_min, opts.t_max))
            new_argmax, token_entropy, sc_probs = scored.argmax, scored.entropy, scored.self_conditioning
            finite &= torch.isfinite(token_entropy).all()
            if pinned is not None:
                new_argmax, token_entropy = pinned.hold(new_argmax), pinned.entropy(token_entropy)
            accepted = sampler.accept(token_entropy, opts.entropy_bound)
            nxt = step.draw(accepted)
            if pinned is not None:
                nxt, accepted = pinned.hold(nxt), accepted & ~pinned.mask  # a pinned token takes no sample
            if any_converged:
                # Rows that converged earlier are frozen: the batched forward ran, but nothing of it is kept.
                frozen = converged[:, None]
                new_argmax = torch.where(frozen, argmax, new_argmax)
                nxt = torch.where(frozen, current, nxt)
                sc_probs = torch.where(frozen[..., None], prev_probs, sc_probs)
            if opts.stability_threshold == 0:
                stable = torch.ones(B, dtype=torch.bool, device=self.device)
            else:
                stable = (history == new_argmax[None]).all(-1).all(0)
                history = torch.roll(history, shifts=-1, dims=0)
                history[-1] = new_argmax
            # Confident: the mean entropy over the canvas (with infill, over its holes) is below the threshold.
            mean_entropy = token_entropy.mean(-1) if pinned is None else pinned.mean_entropy(token_entropy)
            newly = stable & (mean_entropy < opts.confidence_threshold)
            changed = new_argmax != argmax
            converged = converged | newly
            current, argmax, prev_probs = nxt, new_argmax, sc_probs
            steps += 1
            # The one device-to-host transfer of the step: the events, the stop test and the forward count.
            host = [x.tolist() for x in (active, argmax, accepted, changed, mean_entropy, converged)]
            forwards += sum(host[0])
            any_converged = any(host[5])
            clock.charge("sample")
            for r in range(B):
                if host[0][r]:
                    yield StepEvent(
                        row=r,
                        canvas=canvas_index,
                        step=steps,
                        max_steps=N,
                        ids=tuple(host[1][r]),
                        accepted=tuple(host[2][r]),
                        changed=tuple(host[3][r]),
                        mean_entropy=host[4][r],
                        converged=host[5][r],
                        fixed=fixed,
                    )
            if all(host[5]):
                break
        if not finite.item():  # before the canvas is finalised: no answer made of NaN's argmax
            raise NonFiniteError(
                f"the model computed NaN or infinite logits (canvas {canvas_index + 1}): corrupt weights, or "
                f"activations that overflow {str(self.dtype).removeprefix('torch.')}"
            )
        return argmax, steps, forwards

    def _text_stream(self, channels: bool = True) -> TextStream | None:
        """Without `channels` (infill), the answer is all of the text: a hole's end or channel token is no markup."""
        if self.tokenizer is None:
            return None
        return TextStream(self.tokenizer, self.defaults.eos_token_ids if channels else (), channels=channels)

    def _infill_tokens(self, template: Template) -> list[int | None]:
        """The template's tokens, None in its holes, then the end of the model's turn (the rest of the last canvas
        is padding, as a finished canvas is padded after its end)."""
        tokenizer, eos = self._chat_tokenizer(), self.defaults.eos_token_ids
        return [*template.ids(tokenizer), tokenizer.turn_close if tokenizer.turn_close in eos else eos[0]]


def _as_rows(prompt_ids: Sequence[int] | Sequence[Sequence[int]]) -> list[list[int]]:
    if len(prompt_ids) == 0:
        raise OptionError("the prompt is empty")
    rows = [list(map(int, r)) for r in prompt_ids] if not isinstance(prompt_ids[0], int) else [list(prompt_ids)]
    if not all(rows):
        raise OptionError("every prompt of a batch needs at least one token")
    return rows
