"""`dgemma pull` on stderr: a total bar and one bar per file (bytes, rate, ETA), then what was verified."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import typer
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

from ..errors import EXIT_INTERRUPTED
from ..units import human
from .hub import Target
from .pull import Event, FileProgress, FileStarted, Note, Planned, Pulled, Resolved, Verified


class PullView:
    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.console = console
        self.total: TaskID | None = None
        self.files: dict[str, tuple[TaskID, int]] = {}  # path -> (task, bytes shown)

    def show(self, event: Event) -> None:
        if isinstance(event, Resolved):
            self._say(f"pulling {event.repo_id} at {event.commit[:12]} as '{event.ref}'")
        elif isinstance(event, Note):
            self._say(event.text)
        elif isinstance(event, FileStarted):
            self._total()
            task = self.progress.add_task(event.path, total=event.size, completed=event.offset)
            self.files[event.path] = (task, event.offset)
        elif isinstance(event, FileProgress):
            self.progress.start()  # on the first bytes: a pull that fails at once shows only its error
            task, shown = self.files[event.path]
            self.progress.update(task, completed=event.done)
            self.progress.advance(self._total(), event.done - shown)
            self.files[event.path] = (task, event.done)
        elif isinstance(event, Planned):
            self.progress.update(self._total(), total=event.total, completed=event.present)
            self.progress.start()
        elif isinstance(event, Verified):
            self.close()
            self._verified(event)
        elif isinstance(event, Pulled):
            self._pulled(event)

    def _say(self, line: str) -> None:
        self.console.print(line, highlight=False, soft_wrap=True)

    def _total(self) -> TaskID:
        """Made with the first file's bar, so it sits above them all; config.json and the shard index arrive before
        the plan, which then sets the total (counting every file already on disk) outright."""
        if self.total is None:
            self.total = self.progress.add_task("total", total=None)
        return self.total

    def close(self) -> None:
        if self.progress.live.is_started:  # stopping a Progress never started still prints a blank line
            self.progress.stop()

    def _verified(self, event: Verified) -> None:
        checks = ["sizes and sha256 match the hub"] if event.hashes else []
        checks.append(f"{event.tensors} tensors match config.json")
        self._say(f"verified {event.files} files: {', '.join(checks)}")

    def _pulled(self, event: Pulled) -> None:
        manifest = event.manifest
        fetched = (
            f"{human(event.downloaded)} downloaded in {event.seconds:.1f} s"
            if event.downloaded
            else "nothing to download"
        )
        self._say(f"pulled '{manifest.ref}' ({human(manifest.size_bytes())}, {fetched}): dgemma run {manifest.ref}")


def render(goal: Target, events: Iterable[Event]) -> None:
    """Show a pull as it happens; Ctrl-C keeps what has arrived and says how to go on."""
    view = PullView(Console(stderr=True))
    try:
        for event in events:
            view.show(event)
    except KeyboardInterrupt:
        view.close()
        sys.stderr.write(f"\ndgemma: interrupted; what has arrived is kept: '{goal.again}' resumes\n")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        view.close()
