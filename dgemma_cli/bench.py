"""`dgemma bench`: drives the same event stream as `run`, N times, and reports what a diffusion model's speed
really is: effective decode rate, tokens per decoder forward, steps per canvas, step latency, memory."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from dgemma_runtime import (
    CanvasEvent,
    Engine,
    FinalEvent,
    GenerationOptions,
    GenerationStats,
    LoadFinished,
    Message,
    StepEvent,
)
from rich.console import Console
from rich.table import Table

from .facts import load_rate, weight_breakdown
from .models.store import Manifest

DEFAULT_PROMPTS = (
    "Tell me a story about a brave little boat.",
    "Explain why the sky is blue in three sentences.",
    "Write a short poem about autumn leaves.",
)


@dataclass(frozen=True)
class RunResult:
    """One timed generation."""

    time_to_first_token: float  # seconds until the first canvas was final
    prompt_tokens_per_second: float
    decode_tokens_per_second: float  # effective: after the prompt, re-encoding each finished canvas included
    in_step_tokens_per_second: float  # inside the denoising steps only (decoder forwards and sampling)
    tokens_per_forward: float
    steps_per_canvas: float
    step_latency_p50: float  # seconds between consecutive denoising steps, as a consumer sees them
    step_latency_p90: float
    encode_share: float  # of the generation's time
    decode_share: float
    sample_share: float
    generated_tokens: int
    decoder_forwards: int


@dataclass
class BenchReport:
    model: str
    device: str
    dtype: str
    quantization: str
    kernels: str  # which kernels ran, and how FP8 weights met the activations
    weight_bytes: dict[str, int]  # by storage format, as the engine holds them
    loaded: LoadFinished | None = None  # how long the load took and how much it read
    runs: list[RunResult] = field(default_factory=list)
    peak_gpu_bytes: int = 0
    peak_process_bytes: int = 0

    def medians(self) -> dict[str, float]:
        names = [k for k in asdict(self.runs[0]) if k not in ("generated_tokens", "decoder_forwards")]
        return {name: statistics.median(getattr(r, name) for r in self.runs) for name in names}

    def as_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "kernels": self.kernels,
            "weight_bytes": self.weight_bytes,
            "load_seconds": self.loaded.seconds if self.loaded else None,
            "load_bytes": self.loaded.bytes if self.loaded else None,
            "load_bytes_per_second": self.loaded.bytes_per_second if self.loaded else None,
            "runs": [asdict(r) for r in self.runs],
            "median": self.medians(),
            "peak_gpu_bytes": self.peak_gpu_bytes,
            "peak_process_bytes": self.peak_process_bytes,
        }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed_run(engine: Engine, ids: list[int], options: GenerationOptions) -> RunResult:
    started = time.perf_counter()
    first_canvas = None
    gaps: list[float] = []
    last_step = None
    stats: GenerationStats | None = None
    for event in engine.stream(ids, options=options):
        now = time.perf_counter()
        if isinstance(event, StepEvent):
            if last_step is not None and event.step > 1:
                gaps.append(now - last_step)
            last_step = now
        elif isinstance(event, CanvasEvent) and first_canvas is None:
            first_canvas = now - started
        elif isinstance(event, FinalEvent):
            stats = event.stats
    assert stats is not None
    busy = stats.encode_seconds + stats.decode_seconds + stats.sample_seconds or 1.0
    in_steps = stats.decode_seconds + stats.sample_seconds
    return RunResult(
        time_to_first_token=first_canvas or 0.0,
        prompt_tokens_per_second=stats.prompt_tokens_per_second,
        decode_tokens_per_second=stats.decode_tokens_per_second,
        in_step_tokens_per_second=stats.generated_tokens / in_steps if in_steps > 0 else 0.0,
        tokens_per_forward=stats.tokens_per_forward,
        steps_per_canvas=statistics.mean(stats.steps_per_canvas),
        step_latency_p50=percentile(gaps, 0.5),
        step_latency_p90=percentile(gaps, 0.9),
        encode_share=stats.encode_seconds / busy,
        decode_share=stats.decode_seconds / busy,
        sample_share=stats.sample_seconds / busy,
        generated_tokens=stats.generated_tokens,
        decoder_forwards=stats.decoder_forwards,
    )


def bench(
    engine: Engine,
    model: Manifest,
    prompts: list[str],
    runs: int,
    options: GenerationOptions,
    fixed_steps: bool,
    loaded: LoadFinished | None = None,
) -> BenchReport:
    """A warm-up, then `runs` timed generations cycling through the prompts; `loaded` reports the load before them."""
    if fixed_steps:
        options = options.merged(confidence_threshold=0.0)  # never confident: every canvas runs all its steps
    assert engine.tokenizer is not None
    encoded = [engine.tokenizer.chat([Message("user", p)]) for p in prompts]
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timed_run(engine, encoded[0], options)  # warm-up: allocator, kernels, caches
    assert engine.weights is not None, "bench measures a model loaded from a checkpoint"
    report = BenchReport(
        model=model.ref,
        device=str(engine.device),
        dtype=str(engine.dtype).removeprefix("torch."),
        quantization=engine.weights.quantization,
        kernels=engine.kernels(),
        weight_bytes=engine.weights.by_format,
        loaded=loaded,
    )
    for i in range(runs):
        report.runs.append(timed_run(engine, encoded[i % len(encoded)], options))
    if engine.device.type == "cuda":
        report.peak_gpu_bytes = torch.cuda.max_memory_allocated()
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    report.peak_process_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return report


ROWS = (
    ("time to first token", "time_to_first_token", "{:.3f} s"),
    ("prompt tok/s", "prompt_tokens_per_second", "{:.1f}"),
    ("decode tok/s (effective)", "decode_tokens_per_second", "{:.1f}"),
    ("decode tok/s (in-step)", "in_step_tokens_per_second", "{:.1f}"),
    ("tokens per forward", "tokens_per_forward", "{:.2f}"),
    ("steps per canvas", "steps_per_canvas", "{:.1f}"),
    ("step latency p50", "step_latency_p50", "{:.1f} ms"),
    ("step latency p90", "step_latency_p90", "{:.1f} ms"),
    ("time in encoder", "encode_share", "{:.0%}"),
    ("time in decoder", "decode_share", "{:.0%}"),
    ("time in sampler", "sample_share", "{:.0%}"),
)


def render(report: BenchReport, console: Console) -> None:
    table = Table(title=f"{report.model} on {report.device} ({report.dtype}), {len(report.runs)} runs")
    table.add_column("metric")
    table.add_column("median", justify="right")
    for i in range(len(report.runs)):
        table.add_column(f"run {i + 1}", justify="right")
    for label, name, form in ROWS:
        scale = 1000 if form.endswith("ms") else 1
        values = [report.medians()[name], *(getattr(r, name) for r in report.runs)]
        table.add_row(label, *(form.format(v * scale) for v in values))
    console.print(table)
    console.print(f"quantization: {report.quantization}")
    console.print(f"kernels: {report.kernels}")
    console.print(f"weights: {weight_breakdown(report.weight_bytes)}")
    if report.loaded is not None:
        console.print(f"load: {load_rate(report.loaded)}")
    memory = f"peak memory: process {report.peak_process_bytes / 1e6:.0f} MB"
    if report.peak_gpu_bytes:
        memory += f", GPU {report.peak_gpu_bytes / 1e6:.0f} MB"
    console.print(memory)
