"""Images on the command line and in the chat: the words of a prompt that name image files (Ollama's way), and
the soft tokens each image became, for the live view's header."""

from __future__ import annotations

import re
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # both import torch: `run` finds the images in its words before it knows it needs a model
    from dgemma_runtime import PreparedPrompt, VisionConfig

IMAGE_SUFFIXES = frozenset((".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"))
# A word with the blank before it (so taking it leaves no double space): bare, or quoted when it holds spaces.
WORD = re.compile(r"""(?:^|(?<=\n)|[ \t]+)(?:'([^'\n]+)'|"([^"\n]+)"|([^\s'"]\S*))(?=\s|$)""")


def take_images(text: str) -> tuple[str, list[Path]]:
    """The text without the words that are paths to existing image files (png, jpg/jpeg, webp, gif, bmp), and
    those paths in order. Other words stay, even ones that look like a path: a file that is not there is text."""
    found: list[Path] = []

    def take(match: re.Match[str]) -> str:
        path = Path(next(word for word in match.groups() if word is not None)).expanduser()
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.append(path)
            return ""
        return match.group(0)

    return WORD.sub(take, text).strip(), found


def image_tokens(prompt: PreparedPrompt, vision: VisionConfig | None) -> list[int]:
    """The soft tokens of each image of the prompt, in order: its runs of placeholder ids."""
    if vision is None:
        return []
    return [len(list(run)) for token, run in groupby(prompt.ids) if token == vision.image_token_id]
