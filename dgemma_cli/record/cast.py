"""asciicast v2 (docs.asciinema.org/manual/asciicast/v2): the bytes the live view writes, stamped with the time
of the event that made it write them, so `asciinema play` and GIF converters (agg) replay the run as it went."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import IO


class Cast:
    """Output and resize events in memory; `dumps` is the file."""

    def __init__(self, width: int, height: int, term: str) -> None:
        self.header = {"version": 2, "width": width, "height": height, "env": {"TERM": term}}
        self.size = (width, height)
        self.events: list[list[float | str]] = []

    def output(self, t: float, data: str, size: tuple[int, int]) -> None:
        if size != self.size:  # the terminal was resized: players resize before drawing what follows
            self.size = size
            self.events.append([t, "r", f"{size[0]}x{size[1]}"])
        # A terminal's line discipline turns LF into CR LF before any recorder sees it; players write the data
        # to a terminal emulator as it is, so the cast must hold what the terminal received.
        data = data.replace("\n", "\r\n")
        last = self.events[-1] if self.events else None
        if last is not None and last[0] == t and last[1] == "o":
            last[2] = str(last[2]) + data  # one event per event time: smaller, and the same however it was flushed
        else:
            self.events.append([t, "o", data])

    def dumps(self, speed: float = 1.0) -> str:
        """The file, played `speed` times as fast as it was recorded."""
        events = ([round(float(t) / speed, 6), code, data] for t, code, data in self.events)
        lines = [json.dumps(self.header), *(json.dumps(event, ensure_ascii=False) for event in events)]
        return "\n".join(lines) + "\n"


class CastScreen:
    """The file of the recorded live view's console: what it writes goes to the terminal, when there is one, and
    into the cast at the current event time. Without a terminal it is a screen that only the recording sees."""

    def __init__(self, cast: Cast, clock: Callable[[], float], terminal: IO[str] | None = None) -> None:
        self.cast, self.clock, self.terminal = cast, clock, terminal
        self.size: Callable[[], tuple[int, int]] = lambda: cast.size  # the terminal's, once its console exists

    @property
    def encoding(self) -> str:
        return getattr(self.terminal, "encoding", None) or "utf-8"

    def write(self, data: str) -> int:
        if self.terminal is not None:
            self.terminal.write(data)
        self.cast.output(self.clock(), data, self.size())
        return len(data)

    def flush(self) -> None:
        if self.terminal is not None:
            self.terminal.flush()

    def isatty(self) -> bool:
        return self.terminal is not None and self.terminal.isatty()

    def fileno(self) -> int:
        if self.terminal is None:
            raise OSError("an offscreen recording has no file descriptor")
        return self.terminal.fileno()
