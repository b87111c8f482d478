"""An engine whose decoder is certain of a script: the canvas loop, sampler, text stream and views stay real, and
what the model says is known in advance (dgemma-tiny was trained without thinking, and a random model opens no
thought channel on cue)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from dgemma_runtime import Engine

THOUGHT = " The sky looks blue because air scatters the short blue waves of sunlight far more than red ones."
ANSWER = " Blue light scatters most, so the whole sky glows blue."


def scripted(engine: Engine, tokens: list[int]) -> Engine:
    """`engine` with a decoder certain of `tokens`: each canvas's logits pick its slice of them (then padding), so
    every canvas converges in two steps to exactly that slice. The prompt's encoding is the model's own."""
    L, V = engine.config.canvas_length, engine.config.vocab_size
    start: dict[str, int] = {}

    def decode(canvas: torch.Tensor, cache, prev_probs, out=None) -> torch.Tensor:
        c = (cache.length - start.setdefault("length", cache.length)) // L
        wanted = tokens[c * L : (c + 1) * L]
        wanted = torch.tensor(wanted + [engine.defaults.pad_token_id] * (L - len(wanted)))
        logits = torch.full((canvas.shape[0], L, V), -20.0)
        logits[:, torch.arange(L), wanted] = 20.0
        return logits

    stream = engine.stream

    def fresh_stream(*args, **kwargs) -> Iterator:
        start.clear()  # a new generation: its first decode sets where its canvases begin
        return stream(*args, **kwargs)

    engine.decode, engine.stream = decode, fresh_stream  # type: ignore[method-assign]
    return engine


def thinking_script(tokenizer) -> list[int]:
    """A thought channel of about two canvases, then the answer and the end of the turn."""
    thought = [tokenizer.channel_open, *tokenizer.encode("thought\n" + THOUGHT), tokenizer.channel_close]
    return thought + tokenizer.encode(ANSWER) + [tokenizer.turn_close]
