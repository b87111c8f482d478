"""An animated SVG of the live view: every frame laid side by side on one strip that a CSS keyframe animation
slides past a one-frame window at the frames' own times. No scripts and nothing external, so it plays in a
browser and in a GitHub README (which strips scripts from SVG)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from xml.sax.saxutils import escape

from rich.cells import cell_len

from .frame import Frame
from .layout import Segment, screen_rows
from .palette import BACKGROUND, CLASSES, FOREGROUND, PAINTS

FONT = "14px ui-monospace,SFMono-Regular,Menlo,Consolas,'DejaVu Sans Mono','Liberation Mono',monospace"
CELL, ROW, PAD = 8.4, 18, 14  # px: a column (0.6em), a row, the margin
BASELINE = 13  # px below a row's top
HOLD_SECONDS = 3.0  # the last frame stays this long before the loop starts again
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")  # e.g. U+FFFF: not allowed in XML


def render(frames: Sequence[Frame], width: int, height: int) -> str:
    shots = _distinct([(frame.t, screen_rows(frame, width, height)) for frame in frames])
    rows = max((len(picture) for _, picture in shots), default=1)
    frame_width, frame_height = 2 * PAD + width * CELL, 2 * PAD + rows * ROW
    duration = shots[-1][0] + HOLD_SECONDS
    size = f'width="{_px(frame_width)}" height="{_px(frame_height)}"'
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" {size} viewBox="0 0 {_px(frame_width)} {_px(frame_height)}" '
        'xml:space="preserve">',
        f"<style>{_style(shots, frame_width, duration)}</style>",
        f'<rect width="100%" height="100%" rx="6" fill="{BACKGROUND}"/>',
        '<g id="strip">',
    ]
    for index, (t, picture) in enumerate(shots):
        parts.append(f'<g class="frame" data-t="{t}" transform="translate({_px(index * frame_width)})">')
        parts += [_row(number, segments) for number, segments in enumerate(picture) if segments]
        parts.append("</g>")
    parts.append("</g></svg>")
    return "\n".join(parts) + "\n"


def _distinct(shots: list[tuple[float, list[list[Segment]]]]) -> list[tuple[float, list[list[Segment]]]]:
    """A frame that looks like the one before it adds nothing; at least one frame, blank if need be."""
    kept = [shot for i, shot in enumerate(shots) if i == 0 or shot[1] != shots[i - 1][1]]
    return kept or [(0.0, [])]


def _style(shots: list[tuple[float, list[list[Segment]]]], frame_width: float, duration: float) -> str:
    # steps(1, end): each keyframe's value holds until the next one, so frame k shows from its own time on (and
    # the first from the start).
    offsets = [0.0] + [100 * t / duration for t, _ in shots[1:]]
    stops = [f"{offset:.3f}%{{transform:translateX({_px(-i * frame_width)}px)}}" for i, offset in enumerate(offsets)]
    last = f"translateX({_px(-(len(shots) - 1) * frame_width)}px)"
    rules = [
        f"#strip{{animation:play {duration:.3f}s steps(1,end) infinite}}",
        f"@keyframes play{{{''.join(stops)}100%{{transform:{last}}}}}",
        f"@media (prefers-reduced-motion:reduce){{#strip{{animation:none;transform:{last}}}}}",
        f"text{{font:{FONT};fill:{FOREGROUND};white-space:pre}}",
    ]
    for role, paint in PAINTS.items():
        if not paint.plain:
            rules.append(f".{CLASSES[role]}{{{';'.join(paint.declarations('fill'))}}}")
        if paint.background:
            rules.append(f".{CLASSES[role]}b{{fill:{paint.background}}}")
    return "".join(rules)


def _row(number: int, segments: list[Segment]) -> str:
    top = PAD + number * ROW
    backgrounds = [
        f'<rect class="{CLASSES[role]}b" x="{_px(PAD + column * CELL)}" y="{top}" '
        f'width="{_px(cell_len(text) * CELL)}" height="{ROW}"/>'
        for column, text, role in segments
        if PAINTS[role].background
    ]
    spans = "".join(
        f'<tspan x="{_px(PAD + column * CELL)}"{_class(role)}>{escape(_NOT_XML.sub("·", text))}</tspan>'
        for column, text, role in segments
    )
    return "".join(backgrounds) + f'<text y="{top + BASELINE}">{spans}</text>'


def _class(role: str) -> str:
    return "" if PAINTS[role].plain else f' class="{CLASSES[role]}"'


def _px(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")
