"""What `dgemma show` reports about a model: read from its folder, computed by the runtime's own rules."""

from __future__ import annotations

import torch
from dgemma_runtime import load_config
from dgemma_runtime.cache import cache_bytes, step_workspace_bytes
from dgemma_runtime.weights import parameter_counts

from .store import Manifest

DEFAULT_CONTEXT = 8192


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def count(n: int) -> str:
    """A parameter count the way model cards write it: 6.7M, 25.25B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}".rstrip("0").rstrip(".") + unit
    return str(n)


def gpu_line(needed: int) -> str:
    if not torch.cuda.is_available():
        return "no GPU found: runs on the CPU"
    free, total = torch.cuda.mem_get_info()
    verdict = "fits" if needed <= free else "does not fit"
    return f"{torch.cuda.get_device_name()}: {human(free)} free of {human(total)}, {verdict}"


def model_facts(manifest: Manifest) -> list[tuple[str, str]]:
    config, defaults = load_config(manifest.folder)
    total, active = parameter_counts(config)
    weights = manifest.size_bytes()
    context = min(DEFAULT_CONTEXT, config.max_position_embeddings)
    dtype = torch.bfloat16
    needed = weights + cache_bytes(config, 1, context, dtype) + step_workspace_bytes(config, 1)
    folder = manifest.folder
    has_template = (folder / "chat_template.jinja").exists() or (folder / "tokenizer.json").exists()
    return [
        ("architecture", "diffusion_gemma (block diffusion, encoder + bidirectional decoder)"),
        ("source", manifest.source + (f" @ {manifest.revision}" if manifest.revision else "")),
        ("parameters", f"{count(total)} total, {count(active)} active per token"),
        ("experts", f"{config.num_experts}, {config.top_k_experts} per token"),
        ("quantization", manifest.quantization),
        ("context length", str(config.max_position_embeddings)),
        ("canvas length", str(config.canvas_length)),
        (
            "sampler",
            f"{defaults.max_denoising_steps} steps, t {defaults.t_max}→{defaults.t_min}, "
            f"entropy bound {defaults.entropy_bound}, confidence {defaults.confidence_threshold}",
        ),
        ("chat template", "yes (Gemma 4 turns)" if has_template else "no"),
        ("weights", human(weights)),
        ("memory needed", f"{human(needed)} at a {context}-token context ({gpu_line(needed)})"),
    ]
