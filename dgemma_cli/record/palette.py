"""The live view's colours as plain values for the SVG and HTML renderers: the views' Rich styles read through
Rich's own SVG-export terminal theme, so a recording and `rich`'s exports look alike."""

from __future__ import annotations

from dataclasses import dataclass

from rich.style import Style
from rich.terminal_theme import SVG_EXPORT_THEME

from ..views import SAID_STYLES, STATUS_STYLE, STYLES

THEME = SVG_EXPORT_THEME
BACKGROUND = THEME.background_color.hex
FOREGROUND = THEME.foreground_color.hex
ROLES = {**STYLES, **SAID_STYLES, "status": STATUS_STYLE}  # every way the live view paints text
# Short CSS class names: the SVG repeats them thousands of times.
CLASSES = {
    "unresolved": "u",
    "accepted": "a",
    "settled": "s",
    "corrected": "c",
    "thinking": "t",
    "answer": "n",
    "status": "x",
}
DIM_OPACITY = 0.6


@dataclass(frozen=True)
class Paint:
    color: str
    background: str | None
    bold: bool
    italic: bool
    dim: bool

    @property
    def plain(self) -> bool:
        """Painted like the default text: no CSS class needed."""
        return self == Paint(FOREGROUND, None, False, False, False)

    def declarations(self, color_property: str) -> list[str]:
        """CSS for the text itself; `color_property` is 'fill' in SVG, 'color' in HTML."""
        rules = [f"{color_property}:{self.color}"]
        rules += ["font-weight:bold"] if self.bold else []
        rules += ["font-style:italic"] if self.italic else []
        rules += [f"opacity:{DIM_OPACITY}"] if self.dim else []
        return rules


def paint(style: str) -> Paint:
    parsed = Style.parse(style)
    color = parsed.color.get_truecolor(THEME).hex if parsed.color else FOREGROUND
    background = parsed.bgcolor.get_truecolor(THEME, foreground=False).hex if parsed.bgcolor else None
    return Paint(color, background, bool(parsed.bold), bool(parsed.italic), bool(parsed.dim))


PAINTS = {role: paint(style) for role, style in ROLES.items()}
