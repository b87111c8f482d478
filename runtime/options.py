"""Generation options: the one definition of their names, aliases, types, defaults and valid ranges. The CLI's
flags, the chat's /set and the server's JSON all build a `GenerationOptions` through `from_mapping` (or, for
flags Typer has already typed, straight from these ranges); `None` means 'the checkpoint's default'."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from .config import GenerationDefaults
from .errors import OptionError
from .infill import Template, parse

DEFAULT_MAX_NEW_TOKENS = 2048  # several canvases; the checkpoint's own 256 would cap answers at one canvas

# Other names clients use: the CLI's and Ollama's short ones, and OpenAI's answer lengths.
ALIASES = {
    "steps": "max_denoising_steps",
    "num_predict": "max_new_tokens",
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
}


MAX_STEPS = 1024  # denoising steps per canvas: 20x the checkpoints' 48; each one is a whole decoder forward
MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed takes


@dataclass(frozen=True)
class Range:
    """An option's type, lowest valid value (`low` itself allowed when `closed`) and highest, where one exists
    apart from the model (the answer length's is the model's context: `GenerationOptions.resolve` checks it)."""

    kind: type[int] | type[float]
    low: int | float
    closed: bool = True
    high: int | float | None = None

    def check(self, name: str, value: float) -> None:
        if not math.isfinite(value):
            raise OptionError(f"{name} must be a finite number")
        if value < self.low or (value == self.low and not self.closed):
            raise OptionError(f"{name} must be {'at least' if self.closed else 'greater than'} {self.low:g}")
        if self.high is not None and value > self.high:
            raise OptionError(f"{name} must be at most {self.high}")


# The floats cost the same at any finite value, so they have no upper bound; the integers size the work and the
# memory of a generation. A stability window longer than the steps could never be met (checked on resolving).
OPTION_RANGES: dict[str, Range] = {
    "max_new_tokens": Range(int, 1),
    "max_denoising_steps": Range(int, 1, high=MAX_STEPS),
    "t_min": Range(float, 0, closed=False),
    "t_max": Range(float, 0, closed=False),
    "entropy_bound": Range(float, 0, closed=False),
    "stability_threshold": Range(int, 0, high=MAX_STEPS),
    "confidence_threshold": Range(float, 0),
    "seed": Range(int, 0, high=MAX_SEED),
}

OPTION_NAMES = (*OPTION_RANGES, *ALIASES)  # every name an option answers to, the reference's first


def canonical(name: str) -> str:
    """The reference's name for an option given by any of its names; unknown names are an error."""
    canonical_name = ALIASES.get(name, name)
    if canonical_name not in OPTION_RANGES:
        raise OptionError(f"unknown option '{name}'; the options are {', '.join(OPTION_NAMES)}")
    return canonical_name


def convert(name: str, value: object) -> int | float:
    """A value for the option `name` from JSON (numbers) or typed text (the chat's /set): integers for integer
    options (2.0 is 2, 2.5 is refused), floats for the rest; never a bool. Ranges are checked by the caller."""
    spec = OPTION_RANGES[canonical(name)]
    number: int | float | None = None
    if isinstance(value, str):
        text = value.strip()
        try:
            number = int(text) if spec.kind is int else float(text)
        except ValueError:
            number = None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if spec.kind is float:
            number = float(value)
        elif isinstance(value, int) or value.is_integer():
            number = int(value)
    if number is None:
        kind = "a whole number" if spec.kind is int else "a number"
        raise OptionError(f"option '{name}': {value!r} is not {kind}")
    return number


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int | None = None
    max_denoising_steps: int | None = None
    t_min: float | None = None
    t_max: float | None = None
    entropy_bound: float | None = None
    stability_threshold: int | None = None
    confidence_threshold: float | None = None
    seed: int | None = None
    infill: str | None = None  # a fill-in-the-blanks template (`infill.parse`): a sampler mode, not a number

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> GenerationOptions:
        return cls().updated(values)

    def updated(self, values: Mapping[str, object]) -> GenerationOptions:
        """A copy with `values` applied, under any of the options' names, converted and range-checked. None keeps
        the current value; a negative answer length means 'no limit' (Ollama's num_predict -1), the default."""
        changes: dict[str, object] = {}
        for given, value in values.items():
            name = canonical(given)
            if value is None:
                continue
            number = convert(given, value)
            if name == "max_new_tokens" and number < 0:
                changes[name] = None
                continue
            OPTION_RANGES[name].check(name if given == name else f"{given} ({name})", number)
            changes[name] = number
        return replace(self, **changes)

    def merged(self, **changes: object) -> GenerationOptions:
        """A copy with the non-None `changes` applied (unknown names are an error, never dropped)."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise OptionError(f"unknown generation option(s): {', '.join(unknown)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def resolve(
        self, defaults: GenerationDefaults, context: int | None = None, prompt_tokens: int = 0
    ) -> ResolvedOptions:
        """The options over the checkpoint's defaults, checked. With the model's `context` (in tokens), the answer
        must fit beside a prompt of `prompt_tokens`: a longer answer length is an error naming the room left, and
        'no limit' becomes the default limit or the room left, whichever is less."""

        def pick(name: str, fallback: object) -> object:
            value = getattr(self, name)
            return fallback if value is None else value

        steps = int(pick("max_denoising_steps", defaults.max_denoising_steps))
        max_new = self.max_new_tokens
        if context is not None:
            room = context - prompt_tokens
            if room < 1:
                raise OptionError(
                    f"the prompt is {prompt_tokens} tokens: it does not fit the model's context length of "
                    f"{context} tokens with room for an answer"
                )
            if max_new is not None and max_new > room:
                raise OptionError(
                    f"max_new_tokens (num_predict, max_tokens) must be at most {room} here: the model's context "
                    f"length is {context} tokens and the prompt takes {prompt_tokens}"
                )
            max_new = min(DEFAULT_MAX_NEW_TOKENS, room) if max_new is None else max_new
        resolved = ResolvedOptions(
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS if max_new is None else max_new,
            max_denoising_steps=steps,
            t_min=float(pick("t_min", defaults.t_min)),
            t_max=float(pick("t_max", defaults.t_max)),
            entropy_bound=float(pick("entropy_bound", defaults.entropy_bound)),
            # The checkpoint's window shrinks to fit fewer steps; one asked for must fit them.
            stability_threshold=int(pick("stability_threshold", min(defaults.stability_threshold, steps))),
            confidence_threshold=float(pick("confidence_threshold", defaults.confidence_threshold)),
            seed=self.seed,
            infill=None if self.infill is None else parse(self.infill),  # a malformed template fails here
        )
        resolved.validate()
        return resolved


@dataclass(frozen=True)
class ResolvedOptions:
    max_new_tokens: int
    max_denoising_steps: int
    t_min: float
    t_max: float
    entropy_bound: float
    stability_threshold: int
    confidence_threshold: float
    seed: int | None
    infill: Template | None = None

    def validate(self) -> None:
        """Each value in its range (a checkpoint's own defaults included), the temperatures in order, and the
        stability window within the steps."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and f.name in OPTION_RANGES:
                OPTION_RANGES[f.name].check(f.name, value)
        if self.t_min > self.t_max:
            raise OptionError("temperatures need t_min <= t_max")
        if self.stability_threshold > self.max_denoising_steps:
            raise OptionError(
                f"stability_threshold must be at most max_denoising_steps ({self.max_denoising_steps}): a longer "
                "window could never be met"
            )
