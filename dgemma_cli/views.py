"""Terminal consumers of the runtime's event stream: the live canvas, plain text, JSON and NDJSON frames.

Each view takes events one at a time (`handle`) and returns the final stats from `finish`; none of them
reaches into the engine.
"""

from __future__ import annotations

import json
import sys
import time
import unicodedata
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import asdict
from typing import IO, Protocol

from dgemma_runtime import CHANNEL_CLOSE, CHANNEL_OPEN, CanvasEvent, Event, FinalEvent, GenerationStats, StepEvent
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from .record.frame import Frame, Token

SETTLED_STEPS = 3  # a token unchanged this many steps counts as settled; changing after that is a correction
STYLES = {
    "unresolved": "grey50",
    "accepted": "bold green",
    "settled": "default",
    "corrected": "bold black on yellow",
}
SAID_STYLES = {"thinking": "dim italic", "answer": ""}  # the text above the canvas
THINKING_LABEL = "Thinking…\n"  # above the first thought text (a "thinking" run, so recordings draw it too)
STATUS_STYLE = "bold cyan"
LEGEND = Text.assemble(
    ("unresolved", STYLES["unresolved"]),
    "  ",
    ("accepted this step", STYLES["accepted"]),
    "  ",
    ("settled", STYLES["settled"]),
    "  ",
    ("self-corrected", STYLES["corrected"]),
)


class View(Protocol):
    answer: str

    def handle(self, event: Event) -> None: ...

    def close(self) -> None:
        """Stop drawing and leave what was said on screen; safe to call twice."""

    def finish(self) -> GenerationStats | None: ...


class Decoder(Protocol):
    """What the views need of a tokenizer (a replay has only the token texts a frames stream recorded)."""

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str: ...


class EventClock:
    """Seconds since generation began, read once per event: every view of one event (the frames written, the live
    view, its recording) sees the same time, and a replay sets the times it reads back."""

    def __init__(self) -> None:
        self.origin = time.perf_counter()
        self.now = 0.0

    def tick(self) -> None:
        self.set(time.perf_counter() - self.origin)

    def set(self, seconds: float) -> None:
        self.now = round(seconds, 6)  # what --frames writes, so a replay reads back exactly this

    def __call__(self) -> float:
        return self.now


def stopwatch() -> Callable[[], float]:
    """Seconds since this call, read afresh each time: the clock of a view that no EventClock drives."""
    origin = time.perf_counter()
    return lambda: time.perf_counter() - origin


def consume(events: Generator[Event, None, None], view: View, clock: EventClock | None = None) -> None:
    """Feed a view, stamping each event on `clock`; on Ctrl-C stop generating, leave the screen sane and what was
    said in place."""
    try:
        for event in events:
            if clock is not None:
                clock.tick()
            view.handle(event)
    except KeyboardInterrupt:
        events.close()
        view.close()
        raise


class CanvasTracker:
    """Per-position history of one canvas: how long each token has held, and whether it was corrected."""

    def __init__(self) -> None:
        self.ids: tuple[int, ...] = ()
        self.held: list[int] = []
        self.corrected: list[int] = []  # steps left to show a correction

    def update(self, event: StepEvent) -> list[str]:
        if len(self.ids) != len(event.ids):
            self.ids, self.held, self.corrected = event.ids, [0] * len(event.ids), [0] * len(event.ids)
        states = []
        for i, token in enumerate(event.ids):
            if token == self.ids[i]:
                self.held[i] += 1
                self.corrected[i] = max(0, self.corrected[i] - 1)
            else:
                if self.held[i] >= SETTLED_STEPS:
                    self.corrected[i] = 2
                self.held[i] = 0
            if event.fixed and event.fixed[i]:
                states.append("settled")  # infill's fixed text: shown plainly from the first step
            elif self.corrected[i]:
                states.append("corrected")
            elif event.accepted[i]:
                states.append("accepted")
            elif self.held[i] >= SETTLED_STEPS:
                states.append("settled")
            else:
                states.append("unresolved")
        self.ids = event.ids
        return states


def visible(text: str) -> str:
    """Control characters (ESC among them) would drive the terminal: show them as a mark instead."""
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else "·" for c in text)


class TokenTexts:
    """Decoded text of single token ids (cached), special tokens as written: what --frames records."""

    def __init__(self, tokenizer: Decoder) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        text = self.cache.get(token)
        if text is None:
            text = self.cache[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        return text


class TokenPieces:
    """Display text of single token ids (cached): special tokens as a visible mark, whitespace kept."""

    def __init__(self, tokenizer: Decoder) -> None:
        self.texts = TokenTexts(tokenizer)
        self.cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        piece = self.cache.get(token)
        if piece is None:
            piece = self.texts(token)
            if piece.startswith("<") and piece.endswith(">") and len(piece) > 2:
                piece = "·"  # a special token: keep the canvas geometry, hide the markup
            piece = visible(piece.replace("\ufffd", "·").replace("\n", "⏎\n"))
            self.cache[token] = piece
        return piece


class PlainView:
    """The answer as plain text on `out`, canvas by canvas; thinking (when shown) on `err`."""

    def __init__(self, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr, show_thinking: bool = True) -> None:
        self.out, self.err, self.show_thinking = out, err, show_thinking
        self.answer = ""
        self.thought = False  # thinking was written
        self.stats: GenerationStats | None = None

    def handle(self, event: Event) -> None:
        if isinstance(event, CanvasEvent):
            if event.thinking and self.show_thinking:
                self.thought = True
                self.err.write(event.thinking)
                self.err.flush()
            text = event.text if self.answer else event.text.lstrip()
            if text and self.thought and not self.answer:  # on a shared terminal, the answer starts a line
                self.err.write("\n")
                self.err.flush()
            if text:
                self.out.write(text)
                self.answer += text
                self.out.flush()
        elif isinstance(event, FinalEvent):
            self.stats = event.stats

    def close(self) -> None:
        if self.answer and not self.answer.endswith("\n"):
            self.out.write("\n")
            self.answer += "\n"
            self.out.flush()

    def finish(self) -> GenerationStats | None:
        self.close()
        return self.stats


class JsonView:
    """One JSON object at the end: answer, thinking and stats."""

    def __init__(self, out: IO[str] = sys.stdout, model: str = "") -> None:
        self.out, self.model = out, model
        self.answer, self.thinking = "", ""  # answer: the raw text; printed stripped
        self.stats: GenerationStats | None = None

    def handle(self, event: Event) -> None:
        if isinstance(event, CanvasEvent):
            self.answer += event.text
            self.thinking += event.thinking
        elif isinstance(event, FinalEvent):
            self.stats = event.stats

    def close(self) -> None:
        """An interrupted answer prints no JSON."""

    def finish(self) -> GenerationStats | None:
        record = {
            "model": self.model,
            "answer": self.answer.strip(),
            "thinking": self.thinking.strip(),
            "stats": self.stats.as_dict() if self.stats else None,
        }
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()
        return self.stats


class FramesView:
    """NDJSON: one object per event, for external visualisers. Each carries `t` (seconds since generation began)
    and each step the decoded `texts` of its ids, so a stream replays without the model (`dgemma replay`)."""

    def __init__(
        self, out: IO[str] = sys.stdout, tokenizer: Decoder | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        self.out = out
        self.texts = TokenTexts(tokenizer) if tokenizer is not None else None
        self.clock = clock or stopwatch()
        self.answer = ""
        self.stats: GenerationStats | None = None

    def handle(self, event: Event) -> None:
        if isinstance(event, CanvasEvent):
            self.answer += event.text
        if isinstance(event, StepEvent):
            record = {"type": "step", **asdict(event)}
            if self.texts is not None:
                record["texts"] = [self.texts(token) for token in event.ids]
        elif isinstance(event, CanvasEvent):
            record = {"type": "canvas", **asdict(event)}
        else:
            self.stats = event.stats
            record = {"type": "final", "stats": event.stats.as_dict()}
        record["t"] = round(self.clock(), 6)
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def close(self) -> None:
        """Every frame is already out."""

    def finish(self) -> GenerationStats | None:
        return self.stats


class LiveView:
    """The canvas denoising in place. Finished lines of the answer go to the scrollback as ordinary text; the
    live region holds the unfinished line, the canvas being denoised, a status line and the legend.

    With `thinking` (the prompt asked the model to reason) the canvas's thought channel is drawn dimmed and the
    status line says so; finished thought text goes above the canvas, dimmed under a label (if `show_thinking`).
    With infill, the template's fixed tokens are drawn plainly and only the holes denoise.

    `clock` gives the seconds since generation began (the tok/s shown); `on_frame` gets the picture after every
    event (what a recording draws); `offscreen` is for a console that only a recording sees: the process's
    stdout and stderr are left alone."""

    def __init__(
        self,
        console: Console,
        tokenizer: Decoder,
        show_thinking: bool = True,
        *,
        thinking: bool = False,
        clock: Callable[[], float] | None = None,
        on_frame: Callable[[Frame], None] | None = None,
        offscreen: bool = False,
    ) -> None:
        self.console = console
        self.pieces = TokenPieces(tokenizer)
        self.show_thinking, self.thinking = show_thinking, thinking
        self.tracker = CanvasTracker()
        self.pending = Text()  # the answer's unfinished last line
        self.canvas = Text()
        self.status = Text()
        self.said: list[tuple[str, str]] = []  # everything above the canvas, as (text, kind) runs
        self.tokens: tuple[Token, ...] = ()  # the canvas as drawn
        self.generated = 0
        self.answer = ""
        self.answer_started = self.thought = False
        self.in_thought = False  # the text so far ends inside the thought channel
        self.clock = clock or stopwatch()
        self.on_frame = on_frame
        self.stats: GenerationStats | None = None
        self.live = Live(
            console=console,
            auto_refresh=False,
            transient=True,
            vertical_overflow="crop",
            redirect_stdout=not offscreen,
            redirect_stderr=not offscreen,
        )
        self.live.start()

    def handle(self, event: Event) -> None:
        if isinstance(event, StepEvent):
            self._draw_step(event)
        elif isinstance(event, CanvasEvent):
            self.generated += len(event.ids)
            self.canvas = Text()
            self.tokens = ()
            self.tracker = CanvasTracker()
            self.in_thought = self._thought_positions(event.ids)[1]
            if event.thinking and self.show_thinking:
                if not self.thought:
                    self._commit(THINKING_LABEL, "thinking")
                self.thought = True
                self._commit(event.thinking, "thinking")
            text = event.text if self.answer_started else event.text.lstrip()
            if text:
                if self.thought and not self.answer_started:
                    self._commit("\n\n", "answer")
                self.answer_started = True
                self.answer += text
                self._commit(text, "answer")
        elif isinstance(event, FinalEvent):
            self.stats = event.stats
        self._refresh()

    def _draw_step(self, event: StepEvent) -> None:
        states = self.tracker.update(event)
        self.tokens = tuple(
            Token(token, self.pieces(token), state, held)
            for token, state, held in zip(event.ids, states, self.tracker.held, strict=True)
        )
        thought, _ = self._thought_positions(event.ids)
        canvas = Text()
        for token, dim in zip(self.tokens, thought, strict=True):
            canvas.append(token.text, STYLES[token.state] + (" dim" if dim else ""))  # the thought channel, dimmed
        self.canvas = canvas
        elapsed = self.clock()
        # Finished canvases' tokens and this canvas's decided ones (infill's fixed text aside): a rate from step 1.
        resolved = sum(state != "unresolved" for state in states) - sum(event.fixed)
        rate = (self.generated + resolved) / elapsed if elapsed > 0 else 0.0
        self.status = Text(
            ("thinking · " if any(thought) else "")
            + f"canvas {event.canvas + 1} · step {event.step}/{event.max_steps} · "
            f"accepted {sum(event.accepted)}/{len(event.ids)} · entropy {event.mean_entropy:.2f} · "
            f"{rate:.0f} tok/s",
            style=STATUS_STYLE,
        )

    def _thought_positions(self, ids: Sequence[int]) -> tuple[list[bool], bool]:
        """Which of a canvas's positions lie in the thought channel, following on from the text before it, and
        whether the channel is still open after them."""
        inside, positions = self.in_thought, []
        if not self.thinking:  # a random early canvas may hold a channel token: no flicker where none was asked for
            return [False] * len(ids), False
        for token in ids:
            text = self.pieces.texts(token)
            inside = True if text == CHANNEL_OPEN else False if text == CHANNEL_CLOSE else inside
            positions.append(inside)
        return positions, inside

    def _commit(self, text: str, kind: str) -> None:
        """Complete lines go to the scrollback for good; the rest waits in the live region."""
        self.said.append((visible(text), kind))
        self.pending.append(visible(text), SAID_STYLES[kind])
        plain = self.pending.plain
        cut = plain.rfind("\n")
        if cut >= 0:
            done, self.pending = self.pending[:cut], self.pending[cut + 1 :]
            self.live.console.print(done, soft_wrap=False)

    def _refresh(self) -> None:
        """Wrapped to the terminal's current size; when the text is taller than the screen, its oldest rows
        give way to a '…' marker, so the canvas and the status line always stay visible."""
        width, height = self.console.size
        rows = list((self.pending + self.canvas).wrap(self.console, width))
        room = max(2, height - 3)  # status, legend, and the line the cursor rests on
        if len(rows) > room:
            rows = [Text("…", style="dim"), *rows[-(room - 1) :]]
        self.live.update(Group(*rows, self.status, LEGEND), refresh=True)
        if self.on_frame is not None:
            self.on_frame(Frame(self.clock(), tuple(self.said), self.tokens, self.status.plain))

    def close(self) -> None:
        self.live.stop()
        if self.pending.plain:
            self.console.print(self.pending)
            self.pending = Text()

    def finish(self) -> GenerationStats | None:
        self.close()
        return self.stats


def image_header(images: Sequence[tuple[str, int]]) -> Text:
    """The lines above the live canvas for a prompt with images: each image's name and the tokens it became."""
    return Text("\n").join(
        Text.assemble(("image ", "dim"), visible(name), (f" · {tokens} tokens", "dim")) for name, tokens in images
    )


def print_stats(
    stats: GenerationStats,
    load_seconds: float,
    facts: Sequence[tuple[str, str]] = (),
    err: IO[str] = sys.stderr,
) -> None:
    """Ollama-style statistics, plus what only a diffusion model has: forwards and tokens per forward; then
    `facts`, (label, value) rows about the loaded model."""
    rows = [
        ("total duration", f"{stats.total_seconds + load_seconds:.3f}s"),
        ("load duration", f"{load_seconds:.3f}s"),
        ("prompt eval count", f"{stats.prompt_tokens} token(s)"),
        ("prompt eval duration", f"{stats.prefill_seconds * 1000:.1f}ms"),
        ("prompt eval rate", f"{stats.prompt_tokens_per_second:.2f} tokens/s"),
        ("eval count", f"{stats.generated_tokens} token(s)"),
        ("eval duration", f"{stats.total_seconds - stats.prefill_seconds:.3f}s"),
        ("eval rate", f"{stats.decode_tokens_per_second:.2f} tokens/s"),
        ("decoder forwards", str(stats.decoder_forwards)),
        ("steps per canvas", ", ".join(map(str, stats.steps_per_canvas))),
        ("tokens per forward", f"{stats.tokens_per_forward:.2f}"),
        *facts,
    ]
    for label, value in rows:
        err.write(f"{label + ':':22s}{value}\n")
    err.flush()
