"""What `dgemma show` reports about a model, read from its folder and computed by the runtime's own rules; and
what `run --verbose` adds about the model it loaded (its quantization and weight memory)."""

from __future__ import annotations

from pathlib import Path

import torch
from dgemma_kernels.backend import describe as describe_kernels
from dgemma_runtime import Engine, TextConfig, load_config
from dgemma_runtime.cache import cache_bytes, step_workspace_bytes
from dgemma_runtime.quantization import QUANTIZE_AT_LOAD, SAFETENSORS_DTYPES, detect_scheme
from dgemma_runtime.weights import parameter_counts, plan_load, read_header, shard_files

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


def stored_weights(folder: Path, config: TextConfig) -> dict[str, int]:
    """Bytes of the weights a load reads, by storage format, from the safetensors headers alone (nothing is
    loaded): a quantized weight's scales count with it, under the checkpoint's precision; the rest by dtype."""
    found = read_header(shard_files(folder))
    plan = plan_load(found, config)  # the runtime's own reading of which tensors hold which weight, in what form
    scheme = detect_scheme(folder)
    quantized = {name for stored in plan.stored() if stored.form != "plain" for name in stored.expected}
    by_format: dict[str, int] = {}
    for name in plan.expected:
        if name not in found:
            continue
        dtype = SAFETENSORS_DTYPES[found[name].dtype]
        key = scheme.precision if scheme and name in quantized else str(dtype).removeprefix("torch.")
        by_format[key] = by_format.get(key, 0) + found[name].nbytes
    return by_format


def quantization(folder: Path, weights: dict[str, int]) -> str:
    """The checkpoint's own quantization, or the one applied while loading (`weights` holds its format), or
    none: then the dtype that holds most of the weights."""
    scheme = detect_scheme(folder)
    if scheme is not None:
        return f"{scheme.precision} ({scheme.source})"
    applied = [name for name in weights if name in QUANTIZE_AT_LOAD]
    if applied:
        return f"{' + '.join(applied)} (quantized while loading)"
    return f"none ({max(weights, key=weights.__getitem__)})"


def weight_breakdown(weights: dict[str, int]) -> str:
    """'8.9 MB (7.1 MB bfloat16 + 1.8 MB nvfp4)', largest first."""
    parts = sorted(weights.items(), key=lambda part: -part[1])
    if len(parts) == 1:
        return f"{human(parts[0][1])} {parts[0][0]}"
    return f"{human(sum(weights.values()))} (" + " + ".join(f"{human(size)} {name}" for name, size in parts) + ")"


def loaded_facts(engine: Engine, folder: Path) -> list[tuple[str, str]]:
    """What `run --verbose` adds to the statistics: the quantization in use and the memory the model takes."""
    weights = engine.weight_memory()
    facts = [("quantization", quantization(folder, weights)), ("weights", weight_breakdown(weights))]
    facts.append(("kernels", describe_kernels(engine.device, weights)))
    if engine.device.type == "cuda":
        facts.append(("peak GPU memory", human(torch.cuda.max_memory_allocated(engine.device))))
    return facts


def model_facts(manifest: Manifest) -> list[tuple[str, str]]:
    """What `show` prints: from the folder's configs and safetensors headers, without loading the weights."""
    config, defaults = load_config(manifest.folder)
    total, active = parameter_counts(config)
    stored = stored_weights(manifest.folder, config)
    context = min(DEFAULT_CONTEXT, config.max_position_embeddings)
    dtype = torch.bfloat16
    needed = sum(stored.values()) + cache_bytes(config, 1, context, dtype) + step_workspace_bytes(config, 1)
    folder = manifest.folder
    has_template = (folder / "chat_template.jinja").exists() or (folder / "tokenizer.json").exists()
    return [
        ("architecture", "diffusion_gemma (block diffusion, encoder + bidirectional decoder)"),
        ("source", manifest.source + (f" @ {manifest.revision}" if manifest.revision else "")),
        ("parameters", f"{count(total)} total, {count(active)} active per token"),
        ("experts", f"{config.num_experts}, {config.top_k_experts} per token"),
        ("quantization", quantization(manifest.folder, stored)),
        ("context length", str(config.max_position_embeddings)),
        ("canvas length", str(config.canvas_length)),
        (
            "sampler",
            f"{defaults.max_denoising_steps} steps, t {defaults.t_max}→{defaults.t_min}, "
            f"entropy bound {defaults.entropy_bound}, confidence {defaults.confidence_threshold}",
        ),
        ("chat template", "yes (Gemma 4 turns)" if has_template else "no"),
        ("weights", weight_breakdown(stored)),
        ("memory needed", f"{human(needed)} at a {context}-token context ({gpu_line(needed)})"),
    ]
