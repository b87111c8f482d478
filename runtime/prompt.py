"""A conversation made ready for the model: its token ids and, when it shows images, their pixels. What
transformers' `processor.apply_chat_template(..., tokenize=True, return_dict=True)` returns for Gemma 4: the chat
text with one mark per image, each mark expanded to <|image> + one placeholder per soft token + <image|>."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import OptionError
from .images import ImageError, ImageSource, load_images
from .tokenizer import IMAGE, Message, Tokenizer, render_chat, render_follow_up
from .vision import VisionConfig


@dataclass(frozen=True)
class PreparedPrompt:
    ids: list[int]
    pixel_values: torch.Tensor | None = None  # [images, max_patches, patch²·3] float32 in [0, 1]
    image_position_ids: torch.Tensor | None = None  # [images, max_patches, 2] int64 (x, y); padding (-1, -1)


def as_message(message: Message | Mapping[str, Any]) -> Message:
    """A `Message`, or a dict {"role", "content", optional "images": [paths or bytes]}."""
    if isinstance(message, Message):
        return message
    if "role" not in message:
        raise OptionError("every message needs a role")
    return Message(message["role"], message.get("content") or "", tuple(message.get("images") or ()))


def prepare(
    messages: Sequence[Message | Mapping[str, Any]],
    tokenizer: Tokenizer,
    vision: VisionConfig | None,
    think: bool = False,
) -> PreparedPrompt:
    """The whole conversation, ending with the generation prompt."""
    chat = [as_message(m) for m in messages]
    if any(m.images for m in chat if m.role in ("system", "developer")):
        raise ImageError("images go in user or model messages; the system prompt takes text only")
    return expand(render_chat(chat, think=think), [image for m in chat for image in m.images], tokenizer, vision)


def prepare_follow_up(
    text: str,
    images: Sequence[ImageSource],
    tokenizer: Tokenizer,
    vision: VisionConfig | None,
    think: bool = False,
    closed: bool = True,
) -> PreparedPrompt:
    """A new user turn for a session whose cache holds the conversation so far (see `render_follow_up`)."""
    return expand(render_follow_up(text, think=think, closed=closed, images=len(images)), images, tokenizer, vision)


def expand(
    text: str, images: Sequence[ImageSource], tokenizer: Tokenizer, vision: VisionConfig | None
) -> PreparedPrompt:
    """Tokenize chat text whose image marks stand for `images`, in order."""
    if not images:
        return PreparedPrompt(tokenizer.encode(text))
    if vision is None:
        raise ImageError("this model reads text only: its checkpoint has no vision tower")
    pieces = text.split(IMAGE)
    if len(pieces) - 1 != len(images):
        raise ImageError(f"the text holds {len(pieces) - 1} {IMAGE} marks for {len(images)} images")
    patches = load_images(list(images), vision.images)
    # Special tokens split the text the same way when it is tokenized whole, so the pieces encode apart.
    ids = tokenizer.encode(pieces[0])
    for piece, image in zip(pieces[1:], patches, strict=True):
        ids += [vision.boi_token_id, *[vision.image_token_id] * image.soft_tokens, vision.eoi_token_id]
        ids += tokenizer.encode(piece)
    return PreparedPrompt(
        ids,
        torch.stack([image.pixels for image in patches]),
        torch.stack([image.positions for image in patches]),
    )
