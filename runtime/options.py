"""Generation options: one definition of the names, defaults and valid ranges. The CLI flags, the REPL's
/set and the server's JSON all build a `GenerationOptions`; `None` means 'the checkpoint's default'."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from .config import GenerationDefaults
from .errors import OptionError

DEFAULT_MAX_NEW_TOKENS = 2048  # several canvases; the checkpoint's own 256 would cap answers at one canvas


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

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def merged(self, **changes: object) -> GenerationOptions:
        """A copy with the non-None `changes` applied (unknown names are an error, never dropped)."""
        unknown = set(changes) - set(self.names())
        if unknown:
            raise OptionError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def resolve(self, defaults: GenerationDefaults) -> ResolvedOptions:
        def pick(name: str, fallback: object) -> object:
            value = getattr(self, name)
            return fallback if value is None else value

        resolved = ResolvedOptions(
            max_new_tokens=int(pick("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
            max_denoising_steps=int(pick("max_denoising_steps", defaults.max_denoising_steps)),
            t_min=float(pick("t_min", defaults.t_min)),
            t_max=float(pick("t_max", defaults.t_max)),
            entropy_bound=float(pick("entropy_bound", defaults.entropy_bound)),
            stability_threshold=int(pick("stability_threshold", defaults.stability_threshold)),
            confidence_threshold=float(pick("confidence_threshold", defaults.confidence_threshold)),
            seed=self.seed,
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

    def validate(self) -> None:
        checks = (
            (self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (self.max_denoising_steps >= 1, "max_denoising_steps must be at least 1"),
            (0 < self.t_min <= self.t_max, "temperatures need 0 < t_min <= t_max"),
            (math.isfinite(self.t_max), "t_max must be finite"),
            (self.entropy_bound > 0, "entropy_bound must be > 0"),
            (self.stability_threshold >= 0, "stability_threshold must be >= 0"),
            (self.confidence_threshold >= 0, "confidence_threshold must be >= 0"),
            (self.seed is None or self.seed >= 0, "seed must be >= 0"),
        )
        for ok, message in checks:
            if not ok:
                raise OptionError(message)
