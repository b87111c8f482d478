"""One `--record FILE`: the target checked before any model loads, the live view that is recorded (the one on the
terminal, or one drawn offscreen beside whatever the user gets), and the file written when the answer ends."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import IO

from dgemma_runtime import Event, GenerationStats
from rich.console import Console

from ..errors import UsageProblem
from ..views import Decoder, LiveView, View
from . import html, svg
from .cast import Cast, CastScreen
from .frame import Frame

FORMATS = (".cast", ".svg", ".html")
DEFAULT_SIZE = (80, 24)
OFFSCREEN_TERM = "xterm-256color"  # what the offscreen console draws for: 256 colours, cursor movement


def recording_size() -> tuple[int, int]:
    """The size of a live view drawn offscreen: COLUMNS and LINES when set, else the size of the terminal the
    process runs in (stdout piped, stderr or stdin still on it), else 80×24. The same rule in `run` and in
    `replay` is what makes a replay draw what the run drew."""
    width, height = DEFAULT_SIZE
    for descriptor in (1, 2, 0):
        try:
            width, height = os.get_terminal_size(descriptor)
            break
        except OSError:
            continue
    columns, lines = os.environ.get("COLUMNS", ""), os.environ.get("LINES", "")
    return (int(columns) if columns.isdigit() else width), (int(lines) if lines.isdigit() else height)


class Recording:
    def __init__(self, path: Path, speed: float = 1.0) -> None:
        if path.suffix.lower() not in FORMATS:
            raise UsageProblem(f"cannot record to '{path.name}': name a .cast, .svg or .html file")
        existed = path.exists()
        with path.open("a"):  # can we write there? (OSError: one line, exit 1, before anything loads)
            pass
        if not existed:
            path.unlink()
        self.path, self.speed = path, speed  # speed: how fast the recording plays (its times / speed)
        self.frames: list[Frame] = []
        self.cast: Cast | None = None
        self.size = DEFAULT_SIZE
        self.live: LiveView | None = None

    def live_view(self, tokenizer: Decoder, clock: Callable[[], float], terminal: IO[str] | None = None) -> LiveView:
        """The recorded live view: on `terminal` when given (the process's stdout, a tty), else on a screen only
        the recording sees, at recording_size()."""
        if terminal is not None:
            width, height = Console(file=terminal).size  # what the live view's console measures too
            screen = CastScreen(Cast(width, height, os.environ.get("TERM", OFFSCREEN_TERM)), clock, terminal)
            console = Console(file=screen, highlight=False)
            screen.size = lambda: (console.size.width, console.size.height)
        else:
            width, height = recording_size()
            screen = CastScreen(Cast(width, height, OFFSCREEN_TERM), clock)
            # Forced and sized, and blind to the environment (TERM=dumb, NO_COLOR): a recording draws the same
            # wherever it is made.
            console = Console(
                file=screen,
                width=width,
                height=height,
                force_terminal=True,
                force_jupyter=False,
                color_system="256",
                no_color=False,
                highlight=False,
                _environ={},
            )
        self.cast, self.size = screen.cast, (width, height)
        self.live = LiveView(console, tokenizer, clock=clock, on_frame=self.frames.append, offscreen=terminal is None)
        return self.live

    def around(self, shown: View | None, tokenizer: Decoder, clock: Callable[[], float]) -> View:
        """`shown` (None: nothing but the recording) with the recorded live view beside it, drawn offscreen
        unless `shown` is that view; the file is written when the view finishes or is closed."""
        live = self.live or self.live_view(tokenizer, clock)
        return RecordedView(self, shown or live, live)

    def save(self) -> None:
        assert self.cast is not None, "a recording is saved after its live view drew"
        width, height = self.size
        suffix = self.path.suffix.lower()
        # The speed changes only when things show, not what shows: the tok/s drawn stay as measured.
        frames = [replace(frame, t=round(frame.t / self.speed, 6)) for frame in self.frames]
        if suffix == ".cast":
            text = self.cast.dumps(self.speed)
        elif suffix == ".svg":
            text = svg.render(frames, width, height)
        else:
            text = html.render(frames, width, height)
        self.path.write_text(text, encoding="utf-8")


class RecordedView:
    """A view and the recorded live view, fed the same events."""

    def __init__(self, recording: Recording, shown: View, live: LiveView) -> None:
        self.recording, self.shown, self.live = recording, shown, live

    @property
    def answer(self) -> str:
        return self.shown.answer

    def handle(self, event: Event) -> None:
        self.shown.handle(event)
        if self.live is not self.shown:
            self.live.handle(event)

    def close(self) -> None:
        self.shown.close()
        self.live.close()
        self.recording.save()  # an interrupted answer is recorded as far as it went

    def finish(self) -> GenerationStats | None:
        stats = self.shown.finish()
        self.live.close()
        self.recording.save()
        return stats
