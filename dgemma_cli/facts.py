"""What `dgemma show` (and /api/show) reports about a model, and what `run --verbose` adds about the model it
loaded: the runtime's `inspect` reads the facts, this module words them."""

from __future__ import annotations

import torch
from dgemma_runtime import DEFAULT_CONTEXT, CheckpointInfo, Engine, Fit, LoadFinished, inspect

from .models.store import Manifest, last_load
from .units import count, human


def fit_line(fit: Fit) -> str:
    if fit.device == "CPU":
        return "no GPU found: runs on the CPU"
    free = "?" if fit.free is None else human(fit.free)
    total = "?" if fit.total is None else human(fit.total)
    return f"{fit.device}: {free} free of {total}, {'fits' if fit.fits else 'does not fit'}"


def weight_breakdown(weights: dict[str, int]) -> str:
    """'8.9 MB (7.1 MB bfloat16 + 1.8 MB nvfp4)', largest first."""
    parts = sorted(weights.items(), key=lambda part: -part[1])
    if len(parts) == 1:
        return f"{human(parts[0][1])} {parts[0][0]}"
    return f"{human(sum(weights.values()))} (" + " + ".join(f"{human(size)} {name}" for name, size in parts) + ")"


def load_rate(loaded: LoadFinished) -> str:
    """'1.85 GB/s (4.2 GB in 2.27 s)'."""
    return f"{loaded.bytes_per_second / 1e9:.2f} GB/s ({human(loaded.bytes)} in {loaded.seconds:.2f} s)"


def loaded_facts(engine: Engine, loaded: LoadFinished | None = None) -> list[tuple[str, str]]:
    """What `run --verbose` adds to the statistics: how fast the model loaded (when `loaded` says), the quantization
    in use and the memory the model takes."""
    facts = [("load rate", load_rate(loaded))] if loaded is not None else []
    if engine.weights is not None:
        facts += [
            ("quantization", engine.weights.quantization),
            ("weights", weight_breakdown(engine.weights.by_format)),
        ]
    facts.append(("kernels", engine.kernels()))
    if engine.device.type == "cuda":
        facts.append(("peak GPU memory", human(torch.cuda.max_memory_allocated(engine.device))))
    return facts


def model_facts(manifest: Manifest, info: CheckpointInfo | None = None) -> list[tuple[str, str]]:
    """What `show` prints: from the folder's configs and safetensors headers, without loading the weights; and
    how its last load went, when one is on record."""
    info = info or inspect(manifest.folder)
    config, defaults = info.config, info.defaults
    total, active = info.parameters
    context = min(DEFAULT_CONTEXT, config.max_position_embeddings)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fit = info.fit(device, torch.bfloat16, context)
    loaded = last_load(manifest)
    return [
        ("architecture", "diffusion_gemma (block diffusion, encoder + bidirectional decoder)"),
        ("source", manifest.source + (f" @ {manifest.revision}" if manifest.revision else "")),
        ("parameters", f"{count(total)} total, {count(active)} active per token"),
        ("experts", f"{config.num_experts}, {config.top_k_experts} per token"),
        ("quantization", info.quantization()),
        ("context length", str(config.max_position_embeddings)),
        ("canvas length", str(config.canvas_length)),
        (
            "sampler",
            f"{defaults.max_denoising_steps} steps, t {defaults.t_max}→{defaults.t_min}, "
            f"entropy bound {defaults.entropy_bound}, confidence {defaults.confidence_threshold}",
        ),
        ("chat template", "yes (Gemma 4 turns)" if info.has_chat_template else "no"),
        ("vision", f"yes: images of up to {info.vision.images.max_soft_tokens} tokens" if info.vision else "no"),
        ("weights", weight_breakdown(info.stored)),
        ("memory needed", f"{human(fit.needed)} at a {context}-token context ({fit_line(fit)})"),
        *([("last load", load_rate(loaded))] if loaded is not None else []),
    ]
