"""Where a 26B denoising step spends its GPU time: the kernels of one decoder forward, grouped and ranked.

bench_26b.py found the bf16 forward at 39 ms replayed as a CUDA graph against a 12 ms memory roofline (H200),
while the MoE kernels account for ~15 ms of it; this names the rest. Builds the released config with random
weights (bf16 or quantized experts), encodes a prompt, then profiles a few decoder forwards with torch.profiler.

    python3 scripts/gpu/profile_step.py [--variant bf16|fp8|nvfp4] [--prompt 1024] [--rows 25]

Imports the installed dgemma_runtime and dgemma_kernels (`pip install -e .` in the checkout first; run_all.sh
does), and bench_26b beside it, which Python finds because it puts a script's own folder on the path.
"""

from __future__ import annotations

import argparse

import bench_26b  # the model builders, beside this file
import torch
from dgemma_runtime.cache import KVCache
from dgemma_runtime.config import RELEASED_TEXT_CONFIG, parse_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="bf16", choices=("bf16", "fp8", "nvfp4"))
    parser.add_argument("--prompt", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--dry-run-cpu", action="store_true", help="a small config on the CPU, to test this script")
    args = parser.parse_args()
    text = dict(RELEASED_TEXT_CONFIG)
    canvas_length = 256
    if args.dry_run_cpu:
        bench_26b.DEVICE, canvas_length, args.prompt = "cpu", 32, 64
        text.update(vocab_size=4096, hidden_size=256, intermediate_size=256, moe_intermediate_size=64, num_experts=8)
        text.update(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"], head_dim=32)
        text.update(global_head_dim=64, num_attention_heads=4, num_key_value_heads=2)
    device = bench_26b.DEVICE
    config = parse_config({"model_type": "diffusion_gemma", "canvas_length": canvas_length, "text_config": text})
    maker = {"bf16": None, "fp8": bench_26b.random_fp8, "nvfp4": bench_26b.random_nvfp4}[args.variant]
    model = bench_26b.build_model(config, maker)
    cache = KVCache(config, 1, args.prompt, torch.device(device), torch.bfloat16)
    vocab = config.vocab_size
    with torch.inference_mode():
        model.encode(torch.randint(0, vocab, (1, args.prompt), device=device), cache)
        canvas = torch.randint(0, vocab, (1, canvas_length), device=device)
        probs = torch.softmax(torch.randn(1, canvas_length, vocab, device=device), -1).bfloat16()
        for _ in range(3):
            model.decode(canvas, cache, probs)
        bench_26b.sync()
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(3):
                model.decode(canvas, cache, probs)
            bench_26b.sync()
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(f"26B {args.variant}, prompt {args.prompt}, 3 decoder forwards of a {canvas_length}-token canvas")
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
