"""The Gemma 4 tokenizer (`tokenizer.json` through the `tokenizers` package), the chat format (§5.3) and
incremental decoding of canvases into answer and thinking text."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer as HFTokenizer

from .errors import CheckpointError

if TYPE_CHECKING:  # images.py imports torch; a tokenizer needs only the type
    from .images import ImageSource

BOS, TURN_OPEN, TURN_CLOSE = "<bos>", "<|turn>", "<turn|>"
THINK, CHANNEL_OPEN, CHANNEL_CLOSE = "<|think|>", "<|channel>", "<channel|>"
THOUGHT_LABEL = "thought\n"  # the channel name the model writes after <|channel>
IMAGE = "<|image|>"  # the template's mark for one image; `prompt.py` expands it into the image's soft tokens
_THINKING_BLOCK = re.compile(re.escape(CHANNEL_OPEN) + ".*?" + re.escape(CHANNEL_CLOSE), re.DOTALL)


@dataclass(frozen=True)
class Message:
    role: str  # "system", "user" or "model" ("assistant" is accepted as "model")
    content: str
    images: tuple[ImageSource, ...] = ()  # shown before the text, as transformers' content lists put them


def render_chat(messages: Sequence[Message], think: bool = False, add_generation_prompt: bool = True) -> str:
    """The prompt text in Gemma 4 turn format; special tokens are written as their strings."""
    system = "\n".join(m.content.strip() for m in messages if m.role in ("system", "developer"))
    parts = [BOS]
    if system or think:
        parts.append(f"{TURN_OPEN}system\n{THINK + chr(10) if think else ''}{system}{TURN_CLOSE}\n")
    for message in messages:
        if message.role in ("system", "developer"):
            continue
        role = "model" if message.role in ("assistant", "model") else message.role
        content = message.content.strip()
        if role == "model":
            content = _THINKING_BLOCK.sub("", content).strip()  # history drops earlier reasoning
        parts.append(f"{TURN_OPEN}{role}\n{IMAGE * len(message.images)}{content}{TURN_CLOSE}\n")
    if add_generation_prompt:
        parts.append(_generation_prompt(think))
    return "".join(parts)


def render_follow_up(user_text: str, think: bool = False, closed: bool = True, images: int = 0) -> str:
    """Continues a conversation whose cache already holds every earlier turn: closes the model's turn if its
    answer was cut short, then the new user turn (after its `images` marks) and the generation prompt."""
    reopen = "" if closed else TURN_CLOSE
    turn = f"{TURN_OPEN}user\n{IMAGE * images}{user_text.strip()}{TURN_CLOSE}\n"
    return f"{reopen}\n{turn}" + _generation_prompt(think)


def _generation_prompt(think: bool) -> str:
    # Thinking off: an empty, already-closed thought channel, or the model opens its own (§7 item 29).
    return f"{TURN_OPEN}model\n" + ("" if think else f"{CHANNEL_OPEN}{THOUGHT_LABEL}{CHANNEL_CLOSE}")


class Tokenizer:
    def __init__(self, path: Path) -> None:
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses for every parse error
            raise CheckpointError(f"{path}: cannot load tokenizer ({exc})") from None
        self.channel_open = self._tok.token_to_id(CHANNEL_OPEN)
        self.channel_close = self._tok.token_to_id(CHANNEL_CLOSE)
        self.turn_close = self._tok.token_to_id(TURN_CLOSE)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Plain encoding: no BOS or other special tokens are added (the chat format writes its own)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def chat(self, messages: Sequence[Message], think: bool = False) -> list[int]:
        return self.encode(render_chat(messages, think=think))


class TextStream:
    """Turns canvases of ids into answer and thinking text as they finish.

    Decoding re-reads the current run of same-channel ids, so a multi-byte character split across canvases is
    held back (a trailing U+FFFD) until its last byte arrives.
    """

    def __init__(
        self, tokenizer: Tokenizer, eos_ids: Iterable[int], thinking: bool = False, channels: bool = True
    ) -> None:
        self.tok = tokenizer
        self.eos = set(eos_ids)
        self.thinking = thinking  # inside a thought channel
        self.channels = channels  # channel tokens switch between answer and thinking (else they are skipped)
        self.run: list[int] = []
        self.emitted = 0  # characters of the current run already returned
        self.ended = False

    def _flush(self, final: bool) -> str:
        text = self.tok.decode(self.run)
        if self.thinking:
            if not final and THOUGHT_LABEL.startswith(text):
                return ""  # the channel label may still be arriving
            text = text.removeprefix(THOUGHT_LABEL)
        if not final:
            text = text.rstrip("\ufffd")
        new, self.emitted = text[self.emitted :], max(self.emitted, len(text))
        return new

    def _switch(self, thinking: bool, out: dict[bool, list[str]]) -> None:
        out[self.thinking].append(self._flush(final=True))
        self.thinking, self.run, self.emitted = thinking, [], 0

    def feed(self, ids: Iterable[int]) -> tuple[str, str]:
        """(answer text, thinking text) that these ids add."""
        out: dict[bool, list[str]] = {False: [], True: []}
        for token in ids:
            if self.ended:
                break
            if token in self.eos:
                self.ended = True
            elif self.channels and token == self.tok.channel_open:
                self._switch(True, out)
            elif self.channels and token == self.tok.channel_close:
                self._switch(False, out)
            else:
                self.run.append(token)
        out[self.thinking].append(self._flush(final=self.ended))
        return "".join(out[False]), "".join(out[True])
