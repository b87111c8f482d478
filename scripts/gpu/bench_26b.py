"""The released 26B configuration with random weights, built directly on one GPU: speed against the roofline.

For bf16 experts, FP8 experts, NVFP4 experts and FP8 everywhere (experts, attention, dense MLP), at batch 1 and a
fixed 16 denoising steps per 256-token canvas (early stopping off, EOS never matches): prefill tok/s, decoder-step
latency (p50 over the timed steps, sampler included, as `dgemma run` pays it) and tok/s, both eager and with
the engine's CUDA-graph path, and the decoder forward alone replayed as a CUDA graph (the GPU's own time), with
the fused kernels and without (`unfused`, both for the graphed forward and for the eager step, sampler included).
The roofline is the bytes one step must stream (every weight once, all experts: at ≈16 tokens per expert every
expert is used, and the embedding twice, for self-conditioning and lm_head) over a measured device copy bandwidth.
Also, with the faster step path of each variant: end to end at vLLM's published setting (a 4,096-token prompt and
512 new tokens, prefill included), and for FP8 the aggregate rate at batch 4 (what `serve` batches) with its peak
memory.

    python3 scripts/gpu/bench_26b.py [--prompt 1024] [--canvases 3] [--variants bf16,fp8,nvfp4,fp8-all]

Imports the installed dgemma_runtime and dgemma_kernels: `pip install -e .` in the checkout first (run_all.sh
does). One table; with $OUT set, the result file `$OUT/<date>-<gpu>.json` (`{"gpu", "torch", "triton", "bandwidth",
"rows": [{"variant", "step_ms", "decode_tok_s", "e2e_tok_s", "roofline_tok_s", "peak_gib", ...}]}`), to commit
under scripts/gpu/results/.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
from dgemma_kernels import Fp8Weight, Nvfp4Weight, backend
from dgemma_runtime import DiffusionGemma, Engine, FinalEvent, GenerationDefaults, StepEvent
from dgemma_runtime.cache import KVCache
from dgemma_runtime.config import RELEASED_TEXT_CONFIG, parse_config
from dgemma_runtime.quantization import install_quantized, is_quantization_target

DEVICE = "cuda"
CANVAS = 256
STEPS = 16
FIXED = {"max_denoising_steps": STEPS, "confidence_threshold": 0.0, "seed": 0}  # every step runs, no EOS
E2E_NEW_TOKENS = 512  # vLLM's published setting, with a 4,096-token prompt (--e2e-prompt)
BATCH = 4


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def median_seconds(work, repeats: int = 10) -> float:
    """Median wall time of `work()` after two warm-ups, synchronised on each side."""
    times = []
    for _ in range(repeats + 2):
        sync()
        began = time.perf_counter()
        work()
        sync()
        times.append(time.perf_counter() - began)
    return statistics.median(times[2:])


def copy_bandwidth(nbytes: int) -> float:
    """Bytes read plus bytes written per second by a device-to-device copy."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=DEVICE).random_(0, 255)
    dst = torch.empty_like(src)
    return nbytes / median_seconds(lambda: dst.copy_(src))


def build_model(config, make=None, dense: bool = False):
    """The model on the GPU, weights ~N(0, 0.02), norms and scales 1 — no checkpoint involved. With `make`, the
    targeted weights are made directly in that format, so the bf16 versions never exist."""
    with torch.device("meta"):
        model = DiffusionGemma(config).to(torch.bfloat16)
    for name, meta in list(model.named_parameters()):
        if make is not None and meta.dim() >= 2 and is_quantization_target(name, dense):
            install_quantized(model, {name: make(tuple(meta.shape))})
            continue
        weight = torch.empty(meta.shape, dtype=torch.bfloat16, device=DEVICE)
        weight.normal_(0.0, 0.02) if meta.dim() >= 2 else weight.fill_(1.0)
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, torch.nn.Parameter(weight, requires_grad=False))
    for name, value in DiffusionGemma.rope_buffers(config).items():
        setattr(model, name, value.to(DEVICE))
    return model.eval()


def random_fp8(shape: tuple[int, ...]):
    q = torch.randn(shape, device=DEVICE, dtype=torch.bfloat16).mul_(64).to(torch.float8_e4m3fn)
    scale = torch.full((*shape[:-1], 1), 0.02 / 64, device=DEVICE)
    return Fp8Weight(q, scale, shape[-1])


def random_nvfp4(shape: tuple[int, ...]):
    *lead, K = shape
    packed = torch.randint(0, 256, (*lead, K // 2), dtype=torch.uint8, device=DEVICE)
    block = (torch.rand((*lead, K // 16), device=DEVICE) * 400 + 8).to(torch.float8_e4m3fn)
    return Nvfp4Weight(packed, block, torch.full(lead, 0.02 / (6 * 448), device=DEVICE))


def weight_bytes(model) -> tuple[int, int]:
    total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    embed = model.embed_tokens.weight
    return total, embed.numel() * embed.element_size()


def graph_decode_ms(engine, prompt_len: int) -> float | None:
    """The decoder forward alone, captured once as a CUDA graph and replayed (GPU time without launch gaps)."""
    if DEVICE != "cuda":
        return None
    try:
        cache = KVCache(engine.config, 1, prompt_len, engine.device, engine.dtype)
        with torch.inference_mode():
            engine.model.encode(torch.randint(0, 100, (1, prompt_len), device="cuda"), cache)
            canvas = torch.randint(0, 100, (1, CANVAS), device="cuda")
            probs = torch.softmax(torch.randn(1, CANVAS, engine.config.vocab_size, device="cuda"), -1).bfloat16()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    engine.model.decode(canvas, cache, probs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                engine.model.decode(canvas, cache, probs)
            times = []
            for _ in range(10):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                graph.replay()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        del graph
        return statistics.median(times)
    except Exception as exc:  # report, don't stop the table: capture needs every op sync-free
        print(f"  graph capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}", flush=True)
        return None


def unfused(work, *args):
    """`work(*args)` with every kernel switch off: the PyTorch ops our Triton kernels replace (norms, RoPE, GELU,
    routing, the experts, FP8 activations, the sampler), as `DGEMMA_FUSED_KERNELS=0` runs them."""
    backend.enabled = False
    try:
        return work(*args)
    finally:
        backend.enabled = True


def random_prompt(engine, length: int, seed: int = 0) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, engine.config.vocab_size, (length,), generator=generator).tolist()


def end_to_end(engine, prompt_len: int, new_tokens: int) -> float:
    """Generated tokens per second of wall time, the prompt's prefill included (after a warm-up at its shape)."""
    prompt = random_prompt(engine, prompt_len)
    engine.generate(prompt, max_new_tokens=CANVAS, **FIXED)
    sync()
    began = time.perf_counter()
    result = engine.generate(prompt, max_new_tokens=new_tokens, **FIXED)
    sync()
    return result.stats.generated_tokens / (time.perf_counter() - began)


def batched(engine, prompt_len: int, canvases: int) -> dict:
    """`BATCH` different prompts of one length decoded together: aggregate decode rate and peak memory."""
    prompts = [random_prompt(engine, prompt_len, seed=row) for row in range(BATCH)]
    engine.generate(prompts, max_new_tokens=CANVAS, **FIXED)
    sync()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stats = engine.generate(prompts, max_new_tokens=CANVAS * canvases, **FIXED).stats
    return {
        f"batch{BATCH}_tok_s": stats.decode_tokens_per_second,
        f"batch{BATCH}_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0,
    }


def measure(engine, prompt_len: int, canvases: int) -> dict:
    prompt = random_prompt(engine, prompt_len)
    engine.generate(prompt, max_new_tokens=CANVAS, **FIXED)  # warm-up: kernels compiled, allocator primed
    sync()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_times, last, stats = [], None, None
    for event in engine.stream(prompt, max_new_tokens=CANVAS * canvases, **FIXED):
        now = time.perf_counter()
        if isinstance(event, StepEvent):
            if last is not None and event.step > 1:  # a canvas's first step also pays its encode
                step_times.append(now - last)
            last = now
        elif isinstance(event, FinalEvent):
            stats = event.stats
    assert stats is not None
    decode_total = stats.total_seconds - stats.prefill_seconds
    return {
        "prefill_tok_s": prompt_len / stats.prefill_seconds,
        "step_ms_p50": 1e3 * statistics.median(step_times),
        "forward_ms": 1e3 * stats.decode_seconds / stats.decoder_forwards,
        "tok_s": stats.generated_tokens / decode_total,
        "generated": stats.generated_tokens,
        "steps_per_canvas": list(stats.steps_per_canvas),
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if DEVICE == "cuda" else 0.0,
    }


def run_variant(variant: str, config, defaults, args, bandwidth: float) -> dict:
    maker = {"bf16": None, "nvfp4": random_nvfp4}.get(variant.split("-")[0], random_fp8)
    model = build_model(config, maker, dense=variant.endswith("-all"))
    total, embed = weight_bytes(model)
    engine = Engine(model, config, defaults)
    row = {"weights_gb": total / 1e9, **measure(engine, args.prompt, args.canvases)}
    row["graph_forward_ms"] = graph_decode_ms(engine, args.prompt)
    row["graph_forward_unfused_ms"] = unfused(graph_decode_ms, engine, args.prompt)
    # The engine's own CUDA-graph path (runtime/graphs.py), end to end: replayed steps, sampler included.
    graphed = measure(Engine(model, config, defaults, cuda_graphs=True), args.prompt, args.canvases)
    row["graphs_step_ms_p50"], row["graphs_tok_s"] = graphed["step_ms_p50"], graphed["tok_s"]
    # The same engine with every fused kernel off (norms, routing, sampler...): what they save end to end.
    row["unfused_step_ms_p50"] = unfused(measure, engine, args.prompt, 1)["step_ms_p50"]
    row["roofline_ms"] = 1e3 * (total + embed) / bandwidth
    row["roofline_tok_s"] = CANVAS / (STEPS * row["roofline_ms"] / 1e3)
    # The issue's headline columns, from the faster of the eager and the graphed step.
    graphs_win = row["graphs_tok_s"] > row["tok_s"]
    fastest = Engine(model, config, defaults, cuda_graphs=True) if graphs_win else engine
    row["step_ms"] = row["graphs_step_ms_p50"] if graphs_win else row["step_ms_p50"]
    row["decode_tok_s"] = max(row["tok_s"], row["graphs_tok_s"])
    row["peak_gib"] = row["peak_gpu_gb"] * 1e9 / 2**30
    row["e2e_tok_s"] = end_to_end(fastest, args.e2e_prompt, E2E_NEW_TOKENS)
    if variant == "fp8":
        row.update(batched(fastest, args.prompt, args.canvases))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=1024)
    parser.add_argument("--canvases", type=int, default=3)
    parser.add_argument("--variants", default="bf16,fp8,nvfp4,fp8-all")
    parser.add_argument("--e2e-prompt", type=int, default=4096, help="prompt tokens of the end-to-end row")
    parser.add_argument("--dry-run-cpu", action="store_true", help="a small config on the CPU, to test this script")
    args = parser.parse_args()
    global DEVICE, CANVAS
    text = dict(RELEASED_TEXT_CONFIG)
    if args.dry_run_cpu:
        DEVICE, CANVAS = "cpu", 32
        text.update(vocab_size=4096, hidden_size=256, intermediate_size=256, moe_intermediate_size=64)
        text.update(num_experts=8, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])
        text.update(head_dim=32, global_head_dim=64, num_attention_heads=4, num_key_value_heads=2)
        args.prompt, args.canvases, args.e2e_prompt = 64, 2, 128

    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (dry run)"
    bandwidth = copy_bandwidth(4 << 30 if DEVICE == "cuda" else 64 << 20)
    print(f"{name}: device copy {bandwidth / 1e12:.2f} TB/s (read + write)", flush=True)
    config = parse_config({"model_type": "diffusion_gemma", "canvas_length": CANVAS, "text_config": text})
    defaults = GenerationDefaults(eos_token_ids=(-1,))  # random weights: never stop at an EOS
    rows = []
    for variant in args.variants.split(","):
        began = time.perf_counter()
        try:
            row = {"variant": variant, **run_variant(variant, config, defaults, args, bandwidth)}
        except Exception as exc:
            row = {"variant": variant, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        gc.collect()  # the variant's model is garbage now: free it before the next one is built
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        row["seconds"] = time.perf_counter() - began
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\n26B, batch 1, prompt {args.prompt}, {STEPS} steps per {CANVAS}-token canvas, {name}")
    head = f"{'variant':9} {'GB':>5} {'prefill tok/s':>13} {'fwd ms':>7} {'graph fwd':>9} {'unfused':>8} {'step ms':>8}"
    head += f" {'unfused':>8}"
    print(head + f" {'+graphs':>8} {'roofline':>8} {'x roof':>6} {'tok/s':>6} {'+graphs':>8} {'roof tok/s':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:9} error: {r['error']}")
            continue
        graph = f"{r['graph_forward_ms']:9.2f}" if r["graph_forward_ms"] else f"{'n/a':>9}"
        graph += f" {r['graph_forward_unfused_ms']:8.2f}" if r["graph_forward_unfused_ms"] else f" {'n/a':>8}"
        best = min(r["step_ms_p50"], r["graphs_step_ms_p50"])
        print(
            f"{r['variant']:9} {r['weights_gb']:5.1f} {r['prefill_tok_s']:13.0f} {r['forward_ms']:7.2f} {graph} "
            f"{r['step_ms_p50']:8.2f} {r['unfused_step_ms_p50']:8.2f} {r['graphs_step_ms_p50']:8.2f} "
            f"{r['roofline_ms']:8.2f} "
            f"{best / r['roofline_ms']:6.2f} {r['tok_s']:6.0f} {r['graphs_tok_s']:8.0f} {r['roofline_tok_s']:10.0f}"
        )
    for r in rows:
        if "error" not in r:
            extra = f", batch {BATCH}: {r[f'batch{BATCH}_tok_s']:.0f} tok/s" if f"batch{BATCH}_tok_s" in r else ""
            print(f"{r['variant']}: end to end {r['e2e_tok_s']:.0f} tok/s (prompt {args.e2e_prompt}){extra}")
    if os.environ.get("OUT"):
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        result = {"gpu": name, "torch": torch.__version__, "triton": triton_version(), "bandwidth": bandwidth}
        Path(os.environ["OUT"], f"{date.today()}-{slug}.json").write_text(json.dumps(result | {"rows": rows}))
    sys.exit(1 if any("error" in r for r in rows) else 0)


if __name__ == "__main__":
    main()
