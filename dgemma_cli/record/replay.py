"""`dgemma replay`: a saved frames stream back into events at their recorded times, through the same recorded
live view as `run --record`. It reads what `dgemma run --frames` writes, and what the server streams from
/api/generate or /api/chat with `"frames": true` (step objects, then Ollama's text chunks)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

from dgemma_runtime import CanvasEvent, DgemmaError, Event, FinalEvent, GenerationStats, StepEvent

from ..views import Decoder, EventClock
from .recording import Recording

PACE_SECONDS = 0.1  # per step, for a stream without times (the server's)


class FramesError(DgemmaError):
    """The file is not a frames stream, or lacks what a recording needs."""


@dataclass
class Stream:
    events: list[tuple[float, Event]] = field(default_factory=list)  # (seconds since the start, event)
    texts: dict[int, str] = field(default_factory=dict)  # token id -> decoded text, as the stream recorded it


class RecordedTexts:
    """A decoder of the ids a stream shows, from the texts it recorded; ids it has no text for go to `fallback`
    (a model's tokenizer), when there is one."""

    def __init__(self, texts: dict[int, str], fallback: Decoder | None = None) -> None:
        self.texts, self.fallback = texts, fallback

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return "".join(self._text(token, skip_special_tokens) for token in ids)

    def _text(self, token: int, skip_special_tokens: bool) -> str:
        if token in self.texts:
            return self.texts[token]
        if self.fallback is None:
            raise FramesError(f"token {token} has no recorded text")
        return self.fallback.decode([token], skip_special_tokens=skip_special_tokens)


def read_stream(path: Path) -> Stream:
    stream = Stream()
    last_step: StepEvent | None = None
    t = 0.0
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                event = _event(record, last_step)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise FramesError(f"{path}:{number}: not a frames record ({exc})") from None
            if event is None:
                continue
            if isinstance(event, StepEvent):
                last_step = event
                stream.texts.update(zip(event.ids, record.get("texts") or (), strict=False))
            if "t" in record:
                t = max(t, float(record["t"]))  # never backwards
            elif isinstance(event, StepEvent):
                t += PACE_SECONDS  # no times (the server's stream): a steady pace
            stream.events.append((t, event))
    if last_step is None:
        raise FramesError(f"{path} holds no denoising steps: record it with 'dgemma run --frames' or \"frames\": true")
    return stream


def _event(record: dict, last_step: StepEvent | None) -> Event | None:
    kind = record.get("type")
    if kind == "step":
        return StepEvent(**_fields(StepEvent, {"row": 0} | record))  # the server leaves out the batch row
    if kind == "canvas":
        return CanvasEvent(**_fields(CanvasEvent, record))
    if kind == "final":
        return FinalEvent(GenerationStats(**_fields(GenerationStats, record["stats"])))
    if "error" in record:
        raise FramesError(f"the stream ends in an error: {record['error']}")
    if kind is None and record.get("done") is False and last_step is not None:
        return _ollama_canvas(record, last_step)
    if kind is None and "done" in record:
        return None  # the server's closing chunk (its statistics), or a chunk before any step
    raise ValueError(f"unknown record type {kind!r}")


def _ollama_canvas(record: dict, last_step: StepEvent) -> CanvasEvent:
    """The server's text chunk of a finished canvas (/api/generate or /api/chat). A canvas is its last step, so
    that step gives its ids."""
    said = record.get("message") or record
    text = said.get("content", said.get("response", ""))
    return CanvasEvent(last_step.row, last_step.canvas, last_step.ids, last_step.step, text, said.get("thinking", ""))


def _fields(cls: type, record: dict) -> dict:
    """The record's values for `cls`'s fields, JSON lists back as tuples; extra keys (t, texts, rates) ignored."""
    return {f.name: _tuple(record[f.name]) for f in fields(cls) if f.name in record}


def _tuple(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def replay(stream: Stream, recording: Recording, fallback: Decoder | None = None) -> None:
    """Feed the stream's events to the recording at their times, and write it."""
    decoder = RecordedTexts(stream.texts, fallback)
    shown = {token for _, event in stream.events if isinstance(event, StepEvent) for token in event.ids}
    if fallback is None and not shown <= stream.texts.keys():
        raise FramesError("the stream has no token texts (the server's has none): pass --model to decode them")
    clock = EventClock()
    view = recording.around(None, decoder, clock)
    for t, event in stream.events:
        clock.set(t)
        view.handle(event)
    view.finish()
