"""What generation reports, as plain host values: the one contract between the engine and every consumer
(live view, plain text, JSON, bench, serve). No tensors, no tokenizer, no terminal objects."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class StepEvent:
    """One denoising step of one row's canvas."""

    row: int
    canvas: int  # 0-based canvas index within this call
    step: int  # 1-based step number within the canvas
    max_steps: int
    ids: tuple[int, ...]  # argmax canvas after this step, [L]
    accepted: tuple[bool, ...]  # positions whose sample was accepted this step
    changed: tuple[bool, ...]  # positions whose argmax differs from the previous step
    mean_entropy: float  # over the positions the sampler writes (with infill, the holes)
    converged: bool  # stable and confident: this row's canvas is final
    fixed: tuple[bool, ...] = ()  # infill: positions held at the template's tokens (empty without infill)


@dataclass(frozen=True)
class CanvasEvent:
    """A finished canvas of one row; `ids` stop at the first EOS (inclusive) or at the answer's length limit."""

    row: int
    canvas: int
    ids: tuple[int, ...]
    steps: int
    text: str = ""  # answer text it adds (empty without a tokenizer)
    thinking: str = ""  # thinking-channel text it adds
    done: bool = False  # this row has finished (EOS or length limit)


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int  # tokens encoded before the first canvas, summed over rows
    generated_tokens: int  # returned: through the first EOS, at most max_new_tokens per row, summed over rows
    canvases: int
    decoder_forwards: int  # per row, as the reference counts them, summed over rows
    steps_per_canvas: tuple[int, ...]  # batched steps run for each canvas
    prefill_seconds: float  # encoding the prompt (a part of encode_seconds)
    encode_seconds: float  # the prompt and every finished canvas
    decode_seconds: float
    sample_seconds: float
    total_seconds: float
    finish_reason: str = "stop"  # "stop" (EOS) or "length"

    @property
    def tokens_per_forward(self) -> float:
        """Returned tokens per decoder forward: the tail of a canvas cut off by the length limit was denoised
        but is not counted, so a cut lowers it, honestly."""
        return self.generated_tokens / self.decoder_forwards if self.decoder_forwards else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        """Effective rate: generated tokens over the time after the prompt (denoising and re-encoding)."""
        busy = self.total_seconds - self.prefill_seconds
        return self.generated_tokens / busy if busy > 0 else 0.0

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        """Every field and derived rate, for JSON output, the server and bench."""
        return asdict(self) | {
            "tokens_per_forward": self.tokens_per_forward,
            "decode_tokens_per_second": self.decode_tokens_per_second,
            "prompt_tokens_per_second": self.prompt_tokens_per_second,
        }


@dataclass(frozen=True)
class FinalEvent:
    stats: GenerationStats
    token_ids: tuple[tuple[int, ...], ...] = field(default=())  # per row, as returned (see CanvasEvent.ids)


Event = StepEvent | CanvasEvent | FinalEvent
