"""Fill in the blanks: a template of fixed text and holes, `{}` (DEFAULT_HOLE tokens) or `{N}` (N tokens), with
`{{` and `}}` for literal braces; a space just before a hole is the hole's to write.

The prompt is the chat's user turn (an instruction, INSTRUCTION by default) with thinking off; the answer's
canvases start pre-filled with the template's tokens, then the end of the turn and padding, and the sampler
holds those positions fixed (`sampler.Pinned`): only the holes are denoised."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import OptionError
from .tokenizer import Tokenizer

DEFAULT_HOLE = 8  # tokens in a `{}` hole: a few words
INSTRUCTION = "Fill in the blanks."  # the user turn when the caller gives no instruction
MAX_HOLE = 999_999  # tokens in one hole (a canvas is 256; the answer's length limit cuts long ones)
_PIECE = re.compile(r"\{\{|\}\}|\{(\d*)\}|[{}]|[^{}]+")


@dataclass(frozen=True)
class Template:
    parts: tuple[str | int, ...]  # fixed text (as pinned), or a hole's length in tokens

    def ids(self, tokenizer: Tokenizer) -> list[int | None]:
        """The template's canvas: each fixed run tokenized on its own (so it decodes back verbatim), None for
        each position of a hole."""
        ids: list[int | None] = []
        for part in self.parts:
            ids += [None] * part if isinstance(part, int) else tokenizer.encode(part)
        return ids


def parse(template: str) -> Template:
    """The template's fixed runs and holes; a stray brace, a hole of 0 tokens or no hole at all is an error."""
    parts: list[str | int] = []
    for match in _PIECE.finditer(template):
        piece, digits = match.group(), match.group(1)
        if digits is not None:
            if len(digits) > len(str(MAX_HOLE)) or (digits and int(digits) < 1):
                raise OptionError(f"infill: a hole holds 1 to {MAX_HOLE} tokens, not {digits[:12]}")
            if parts and isinstance(parts[-1], str) and parts[-1].endswith(" "):
                # The space before a hole is the hole's: tokens carry their leading space, so a model writes
                # "The" + " Jupiter"; a fixed " " token before it would make "The  Jupiter".
                parts[-1] = parts[-1][:-1]
                if not parts[-1]:
                    parts.pop()
            parts.append(int(digits) if digits else DEFAULT_HOLE)
            continue
        if piece in ("{", "}"):
            raise OptionError(f"infill: a stray '{piece}' at character {match.start() + 1} (write {piece * 2})")
        text = piece[0] if piece in ("{{", "}}") else piece
        if parts and isinstance(parts[-1], str):
            parts[-1] += text
        else:
            parts.append(text)
    if not any(isinstance(part, int) for part in parts):
        raise OptionError("infill: the template has no holes: mark them {} or {N} (N tokens)")
    return Template(tuple(parts))
