"""A frame as rows of a terminal `width` columns wide, wrapped the way the live view wraps (Rich's word wrap),
each row a list of (column, text, role) segments; the SVG draws these."""

from __future__ import annotations

import io
import itertools

from rich.cells import cell_len
from rich.console import Console
from rich.text import Span, Text

from ..views import LEGEND, STYLES
from .frame import Frame
from .palette import PAINTS

Segment = tuple[int, str, str]  # column, text, role (a key of palette.ROLES)

_WRAPPER = Console(file=io.StringIO(), width=80)  # Text.wrap wants a console; only the width given counts
_STATE_OF = {style: state for state, style in STYLES.items()}
LEGEND_ROLES = Text(LEGEND.plain, spans=[Span(s.start, s.end, _STATE_OF[str(s.style)]) for s in LEGEND.spans])


def screen_rows(frame: Frame, width: int, height: int) -> list[list[Segment]]:
    """What a terminal `height` rows tall shows: the newest rows of the text and canvas, then the status line
    and the legend (before the first step, the text alone)."""
    body = Text()
    for text, kind in frame.said:
        body.append(text, kind)
    for token in frame.canvas:
        body.append(token.text, token.state)
    rows = list(body.wrap(_WRAPPER, width))
    footer = [*Text(frame.status, "status").wrap(_WRAPPER, width), *LEGEND_ROLES.wrap(_WRAPPER, width)]
    footer = footer if frame.status else []
    rows = rows[max(0, len(rows) - (height - len(footer))) :] + footer
    return [segments(row) for row in rows]


def runs(row: Text) -> list[tuple[str, str]]:
    """The row as consecutive (text, role) runs: the unstyled parts in the row's own style, or as answer text."""
    roles = [str(row.style) or "answer"] * len(row.plain)
    for span in row.spans:
        roles[span.start : span.end] = [str(span.style)] * (span.end - span.start)
    cuts = [0, *(i for i in range(1, len(roles)) if roles[i] != roles[i - 1]), len(roles)]
    return [(row.plain[a:b], roles[a]) for a, b in itertools.pairwise(cuts) if b > a]


def segments(row: Text) -> list[Segment]:
    """Runs with their starting column; blank runs on no background are left out (the columns place what
    follows), and so is trailing space."""
    found: list[Segment] = []
    column = 0
    for text, role in runs(row):
        if text.strip() or PAINTS[role].background:
            found.append((column, text, role))
        column += cell_len(text)
    return found
