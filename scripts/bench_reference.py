"""Time dgemma_runtime's generate() against transformers' on one mid-size random DiffusionGemma, on the CPU.

Same process, same checkpoint, same seeds. At this depth float32 rounding alone moves the logits by ~1e-5
(transformers' own sdpa and eager paths differ by as much), which is enough to change sampled trajectories,
so the share of identical ids is reported rather than required; exact parity is proven by tests/parity.

    PYTHONPATH=. python scripts/bench_reference.py [--threads 2] [--runs 3] [--dtype float32|bfloat16|both]
    PYTHONPATH=. python scripts/bench_reference.py --canvas 64 --canvases 4

The canvas is the released model's 256 tokens by default; `--canvas 64` is the shorter one earlier notes used.
Run it from the repository root with `PYTHONPATH=.`: the random checkpoint comes from the tests' own helper
(tests/support/checkpoints.py, not installed), dgemma_runtime from the installed package (`pip install -e '.[dev]'`,
which also brings transformers).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import dgemma_runtime
import torch

from tests.support.checkpoints import TinySpec, load_reference, write_checkpoint

MID_TEXT = {
    "vocab_size": 32768,
    "hidden_size": 512,
    "intermediate_size": 1024,
    "num_hidden_layers": 6,
    "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "global_head_dim": 128,
    "num_global_key_value_heads": 2,
    "num_experts": 32,
    "top_k_experts": 4,
    "moe_intermediate_size": 256,
    "sliding_window": 128,
    "max_position_embeddings": 4096,
    "use_bidirectional_attention": "vision",
}
STEPS, PROMPT = 16, 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="both")
    parser.add_argument("--canvas", type=int, default=256, help="canvas length (the released model's: 256)")
    parser.add_argument("--canvases", type=int, default=2, help="canvases generated per run")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    dtypes = ("float32", "bfloat16") if args.dtype == "both" else (args.dtype,)
    new_tokens = args.canvas * args.canvases
    print(
        f"config: hidden 512, 6 layers, 32 experts top-4, vocab 32k, canvas {args.canvas}, {STEPS} fixed steps, "
        f"prompt {PROMPT}, {new_tokens} new tokens; {args.threads} threads, median of {args.runs} runs"
    )
    print(f"{'dtype':10s} {'transformers':>13s} {'dgemma':>9s} {'speed-up':>9s}  identical ids")
    with tempfile.TemporaryDirectory() as tmp:
        spec = TinySpec(text=MID_TEXT, canvas_length=args.canvas, perturb=True)
        folder = write_checkpoint(spec, Path(tmp) / "mid")
        for dtype in dtypes:
            ref, mine, same, total = compare(folder, getattr(torch, dtype), args.runs, new_tokens)
            print(f"{dtype:10s} {ref:12.3f}s {mine:8.3f}s {ref / mine:8.2f}x  {same}/{total}")


def compare(folder: Path, dtype: torch.dtype, runs: int, new_tokens: int) -> tuple[float, float, int, int]:
    """Median seconds of transformers' and our generate() at one dtype, and how many ids agree."""
    reference = load_reference(folder).to(dtype)
    ours = dgemma_runtime.load(folder, device="cpu", dtype=dtype)
    prompt = torch.randint(5, 30000, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    gen = {"max_new_tokens": new_tokens, "max_denoising_steps": STEPS}

    def run_reference(seed: int) -> list[int]:
        torch.manual_seed(seed)
        with torch.inference_mode():
            return reference.generate(prompt, **gen).sequences[0, PROMPT:].tolist()

    def run_ours(seed: int) -> list[int]:
        return ours.generate(prompt[0].tolist(), seed=seed, **gen).token_ids

    def timed(fn, seed: int) -> tuple[float, list[int]]:
        start = time.perf_counter()
        ids = fn(seed)
        return time.perf_counter() - start, ids

    run_reference(0), run_ours(0)  # warm-up
    times: dict[str, list[float]] = {"transformers": [], "dgemma": []}
    same = total = 0
    for seed in range(1, runs + 1):
        t_ref, ids_ref = timed(run_reference, seed)
        t_ours, ids_ours = timed(run_ours, seed)
        same += sum(a == b for a, b in zip(ids_ref, ids_ours, strict=False))
        total += len(ids_ours)
        times["transformers"].append(t_ref)
        times["dgemma"].append(t_ours)
    return statistics.median(times["transformers"]), statistics.median(times["dgemma"]), same, total


if __name__ == "__main__":
    main()
