"""`dgemma pull` on stderr: a total bar and one bar per file (bytes, rate, ETA), a bar while a big cached file is
hashed, then what was verified. `show --verify` uses the hashing bars alone."""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterable
from typing import TypeVar

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
from .pull import (
    Checking,
    Event,
    FileProgress,
    FileStarted,
    Note,
    Planned,
    Pulled,
    Resolved,
    Verification,
    Verified,
)

T = TypeVar("T")


class PullView:
    def __init__(self, console: Console, transient: bool = False) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=transient,
        )
        self.console = console
        self.total: TaskID | None = None
        self.files: dict[str, tuple[TaskID, int]] = {}  # path -> (task, bytes shown)
        self.checks: dict[str, TaskID] = {}  # path -> the bar of its hashing, while it runs

    def show(self, event: Event) -> None:
        if isinstance(event, Checking):  # before Note: a Checking is one
            self._checking(event)
        elif isinstance(event, Resolved):
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

    def _checking(self, event: Checking) -> None:
        """A bar while a file is hashed, gone when it is done; a file hashed in one read never gets one."""
        task = self.checks.get(event.path)
        if event.done >= event.size:
            if task is not None:
                self.progress.remove_task(self.checks.pop(event.path))
        elif task is None and event.done:
            self.progress.start()
            self.checks[event.path] = self.progress.add_task(f"checking {event.path}", total=event.size)
        if event.path in self.checks:
            self.progress.update(self.checks[event.path], completed=event.done)

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
        if event.copies is not None:
            checks.append(f"{event.copies} shared-weight copies identical byte for byte")
        self._say(f"verified {event.files} files: {', '.join(checks)}")

    def _pulled(self, event: Pulled) -> None:
        manifest = event.manifest
        fetched = (
            f"{human(event.downloaded)} downloaded in {event.seconds:.1f} s"
            if event.downloaded
            else "nothing to download"
        )
        self._say(f"pulled '{manifest.ref}' ({human(manifest.size_bytes())}, {fetched}): dgemma run {manifest.ref}")


def checked(checks: Generator[Checking, None, T]) -> T:
    """Run a check, its hashing bars on stderr when that is a terminal (and gone after), and return its result."""
    view = PullView(Console(stderr=True), transient=True) if sys.stderr.isatty() else None
    try:
        while True:
            try:
                event = next(checks)
            except StopIteration as stop:
                return stop.value
            if view is not None:
                view.show(event)
    finally:
        if view is not None:
            view.close()


def verified_line(report: Verification) -> str:
    """`show --verify`'s all-clear, naming each check that ran (and the one that could not)."""
    hashed = (
        f"{report.hashed} files match the sha256 recorded when it was pulled"
        if report.hashed
        else "no sha256 recorded (not pulled: files not hashed)"
    )
    return (
        f"OK: {hashed}, {report.tensors} tensors match config.json, "
        f"{report.copies} shared-weight copies identical byte for byte"
    )


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
