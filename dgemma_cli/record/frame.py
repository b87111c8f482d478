"""What the live view shows at one moment, as plain values: the picture every recording format draws."""

from __future__ import annotations

from dataclasses import dataclass

STATES = ("unresolved", "accepted", "settled", "corrected")  # a canvas token's colour state, as the legend names


@dataclass(frozen=True)
class Token:
    """One canvas position as drawn."""

    id: int
    text: str  # as the live view draws it (special tokens and control characters as a mark)
    state: str  # one of STATES
    held: int  # steps it has stood unchanged: the runtime reports no per-token probability, so this is the
    # confidence a viewer can see (at SETTLED_STEPS it counts as settled)


@dataclass(frozen=True)
class Frame:
    """The live view after one event."""

    t: float  # seconds since generation began
    said: tuple[tuple[str, str], ...]  # (text, "thinking" or "answer") runs above the canvas; each frame's
    # runs begin with the previous frame's
    canvas: tuple[Token, ...]  # empty between canvases and at the end
    status: str  # the status line ('' before the first step)
