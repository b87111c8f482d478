"""dgemma_runtime: DiffusionGemma text generation in plain PyTorch, as a stream of denoising events.

model = dgemma_runtime.load(path, device="cpu", dtype="float32")
result = model.generate(prompt_ids, max_new_tokens=512, seed=0)
for event in model.stream(prompt_ids, seed=0): ...
prompt = model.prepare([{"role": "user", "content": "Describe this.", "images": ["a.png"]}])
result = model.generate(prompt, seed=0)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Torch-free, imported at once: what parsing flags, reading configs and talking to a server need.
from .config import GenerationDefaults, TextConfig, load_config
from .errors import (
    CheckpointError,
    ContextFullError,
    DgemmaError,
    InsufficientMemoryError,
    NonFiniteError,
    OptionError,
    UnsupportedModelError,
)
from .events import CanvasEvent, Event, FinalEvent, GenerationStats, StepEvent
from .infill import INSTRUCTION as INFILL_INSTRUCTION
from .infill import parse as parse_infill
from .loading import LoadEvent, LoadFinished, LoadProgress, LoadStarted, ProgressCallback
from .options import DEFAULT_MAX_NEW_TOKENS, OPTION_NAMES, OPTION_RANGES, GenerationOptions, ResolvedOptions
from .tokenizer import CHANNEL_CLOSE, CHANNEL_OPEN, Message, TextStream, Tokenizer, render_chat, render_follow_up

# The rest imports torch (a second or more): each name is imported on first use (PEP 562), so a command that never
# touches a model (`dgemma --help`, `list`, `ps`, a client of `dgemma serve`) starts at once.
_LAZY = {
    **dict.fromkeys(("DEFAULT_CONTEXT", "CheckpointInfo", "Fit", "WeightMemory", "inspect"), "checkpoint"),
    **dict.fromkeys(("Engine", "GenerationResult", "Prompt", "Session"), "generate"),
    **dict.fromkeys(("ImageError", "ImageSource", "open_image"), "images"),
    "load": "loader",
    "reclaim": "memory",
    "DiffusionGemma": "model",
    **dict.fromkeys(("PreparedPrompt", "prepare_prompt"), "prompt"),
    "VisionConfig": "vision",
    **dict.fromkeys(("QUANTIZE_AT_LOAD", "detect_scheme"), "quantization"),
}

if TYPE_CHECKING:
    from .checkpoint import DEFAULT_CONTEXT, CheckpointInfo, Fit, WeightMemory, inspect
    from .generate import Engine, GenerationResult, Prompt, Session
    from .images import ImageError, ImageSource, open_image
    from .loader import load
    from .memory import reclaim
    from .model import DiffusionGemma
    from .prompt import PreparedPrompt
    from .prompt import prepare as prepare_prompt
    from .quantization import QUANTIZE_AT_LOAD, detect_scheme
    from .vision import VisionConfig


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    source = {"prepare_prompt": "prepare"}.get(name, name)  # exported under a name that says what it prepares
    value = getattr(importlib.import_module(f".{module}", __name__), source)
    globals()[name] = value  # imported once
    return value


__all__ = [
    "CHANNEL_CLOSE",
    "CHANNEL_OPEN",
    "DEFAULT_CONTEXT",
    "DEFAULT_MAX_NEW_TOKENS",
    "INFILL_INSTRUCTION",
    "OPTION_NAMES",
    "OPTION_RANGES",
    "QUANTIZE_AT_LOAD",
    "CanvasEvent",
    "CheckpointError",
    "CheckpointInfo",
    "ContextFullError",
    "DgemmaError",
    "DiffusionGemma",
    "Engine",
    "Event",
    "FinalEvent",
    "Fit",
    "GenerationDefaults",
    "GenerationOptions",
    "GenerationResult",
    "GenerationStats",
    "ImageError",
    "ImageSource",
    "InsufficientMemoryError",
    "LoadEvent",
    "LoadFinished",
    "LoadProgress",
    "LoadStarted",
    "Message",
    "NonFiniteError",
    "OptionError",
    "PreparedPrompt",
    "ProgressCallback",
    "Prompt",
    "ResolvedOptions",
    "Session",
    "StepEvent",
    "TextConfig",
    "TextStream",
    "Tokenizer",
    "UnsupportedModelError",
    "VisionConfig",
    "WeightMemory",
    "detect_scheme",
    "inspect",
    "load",
    "load_config",
    "open_image",
    "parse_infill",
    "prepare_prompt",
    "reclaim",
    "render_chat",
    "render_follow_up",
]
