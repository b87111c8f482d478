"""Loading a model, on stderr when it is a terminal: a bar for the checkpoint read (bytes, tensors, rate, ETA) and one
for each later phase (quantize-at-load, moving to the GPU), gone once the model is ready; nothing when stderr is
piped. Ctrl-C stops the load: the runtime lets go of what it read, and the command ends with one line (exit 130)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import typer
from dgemma_runtime import LoadEvent, LoadFinished, LoadProgress, LoadStarted, ProgressCallback
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .errors import EXIT_INTERRUPTED

LABELS = {"read": "reading", "quantize": "quantizing", "to device": "to the GPU"}
T = TypeVar("T")


class LoadView:
    """Draws a load's events on `console` (None: draws nothing) and keeps the `LoadFinished`."""

    def __init__(self, console: Console | None) -> None:
        self.progress = (
            Progress(
                TextColumn("{task.description:<11}"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[tensors]}"),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,  # a loaded model needs no bar left behind
            )
            if console is not None
            else None
        )
        self.tasks: dict[str, TaskID] = {}
        self.tensors = 0
        self.finished: LoadFinished | None = None

    def show(self, event: LoadEvent) -> None:
        if isinstance(event, LoadFinished):
            self.finished = event
            self.close()
        elif self.progress is None:
            return
        elif isinstance(event, LoadStarted):
            self.tensors = event.tensors
            for phase, total in event.phases.items():
                self.tasks[phase] = self.progress.add_task(LABELS[phase], total=total, tensors="")
            self.progress.start()  # once the checkpoint checks out: a load refused at once shows only its error
        elif isinstance(event, LoadProgress):
            tensors = f"{event.tensors}/{self.tensors} tensors"
            self.progress.update(self.tasks[event.phase], completed=event.bytes, tensors=tensors)

    def close(self) -> None:
        if self.progress is not None and self.progress.live.is_started:
            self.progress.stop()


def loading(ref: str, load: Callable[[ProgressCallback], T], draw: bool = True) -> tuple[T, LoadFinished]:
    """`load(progress)`, drawn on stderr when `draw` and stderr is a terminal; with how long it took and how much
    it read. Ctrl-C meanwhile ends the command with one line and exit 130."""
    console = Console(stderr=True)
    view = LoadView(console if draw and console.is_terminal else None)
    try:
        result = load(view.show)
    except KeyboardInterrupt:
        view.close()
        newline = "\n" if console.is_terminal else ""  # past the ^C the terminal echoed
        sys.stderr.write(f"{newline}dgemma: interrupted while loading '{ref}'\n")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        view.close()
    assert view.finished is not None, "the runtime reports the end of every load"
    return result, view.finished
