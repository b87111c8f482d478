"""What a load reports while it reads a checkpoint, as plain host values (like generation's events and pull's):
`LoadStarted`, then `LoadProgress` per phase as the weights arrive, then `LoadFinished`.

Phases: "read" (checkpoint bytes off the disk, or out of the page cache), then, where they apply, "quantize"
(full-precision weights through quantize-at-load) and "to device" (onto a GPU). Each weight goes through the
phases in turn, so their progress interleaves. The callback runs on the thread that called `load`; an exception it
raises (KeyboardInterrupt included) stops the load, and the load lets go of everything it read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Phase = Literal["read", "quantize", "to device"]


@dataclass(frozen=True)
class LoadStarted:
    total_bytes: int  # checkpoint bytes the load reads
    tensors: int  # checkpoint tensors it reads
    phases: dict[Phase, int]  # bytes each phase will handle: "read" always, "quantize" and "to device" if they apply


@dataclass(frozen=True)
class LoadProgress:
    phase: Phase
    bytes: int  # of the phase's total, done so far
    tensors: int  # checkpoint tensors through the phase so far


@dataclass(frozen=True)
class LoadFinished:
    seconds: float  # the whole load: headers, memory check, reading, building the model
    bytes: int  # checkpoint bytes read

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


LoadEvent = LoadStarted | LoadProgress | LoadFinished
ProgressCallback = Callable[[LoadEvent], None]


class LoadReporter:
    """Counts each phase and hands the callback (if any) one event per change, in order."""

    def __init__(self, callback: ProgressCallback | None = None) -> None:
        self.callback = callback
        self.started = time.perf_counter()
        self.total_bytes = 0
        self.done: dict[Phase, tuple[int, int]] = {}  # phase -> (bytes, tensors)

    def start(self, total_bytes: int, tensors: int, phases: dict[Phase, int]) -> None:
        self.total_bytes = total_bytes
        self.done = dict.fromkeys(phases, (0, 0))
        self._emit(LoadStarted(total_bytes, tensors, phases))

    def set(self, phase: Phase, nbytes: int, tensors: int) -> None:
        """The phase's running totals; an event only when they moved."""
        if self.done.get(phase) != (nbytes, tensors):
            self.done[phase] = (nbytes, tensors)
            self._emit(LoadProgress(phase, nbytes, tensors))

    def advance(self, phase: Phase, nbytes: int, tensors: int) -> None:
        done_bytes, done_tensors = self.done.get(phase, (0, 0))
        self.set(phase, done_bytes + nbytes, done_tensors + tensors)

    def finish(self) -> LoadFinished:
        finished = LoadFinished(time.perf_counter() - self.started, self.total_bytes)
        self._emit(finished)
        return finished

    def _emit(self, event: LoadEvent) -> None:
        if self.callback is not None:
            self.callback(event)
