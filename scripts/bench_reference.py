"""Time dgemma_runtime's generate() against transformers' on one mid-size random DiffusionGemma, on the CPU.

Same process, same checkpoint, same seeds. At this depth float32 rounding alone moves the logits by ~1e-5
(transformers' own sdpa and eager paths differ by as much), which is enough to change sampled trajectories,
so the share of identical ids is reported rather than required; exact parity is proven by tests/parity.

    python scripts/bench_reference.py [--threads 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
CANVAS, STEPS, PROMPT, NEW_TOKENS = 64, 16, 200, 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import dgemma_runtime

    from tests.checkpoints import TinySpec, load_reference, write_checkpoint

    spec = TinySpec(text=MID_TEXT, canvas_length=CANVAS, perturb=True)
    gen = {"max_new_tokens": NEW_TOKENS, "max_denoising_steps": STEPS}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_checkpoint(spec, Path(tmp) / "mid")
        reference = load_reference(folder).to(getattr(torch, args.dtype))
        ours = dgemma_runtime.load(folder, device="cpu", dtype=args.dtype)
    prompt = torch.randint(5, 30000, (1, PROMPT), generator=torch.Generator().manual_seed(0))

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
    for seed in range(1, args.runs + 1):
        t_ref, ids_ref = timed(run_reference, seed)
        t_ours, ids_ours = timed(run_ours, seed)
        same += sum(a == b for a, b in zip(ids_ref, ids_ours, strict=False))
        total += len(ids_ours)
        times["transformers"].append(t_ref)
        times["dgemma"].append(t_ours)

    ref, mine = statistics.median(times["transformers"]), statistics.median(times["dgemma"])
    print(
        f"config: hidden 512, 6 layers, 32 experts top-4, vocab 32k, canvas {CANVAS}, {STEPS} fixed steps, "
        f"prompt {PROMPT}, {NEW_TOKENS} new tokens; {args.dtype}, {args.threads} threads, {args.runs} runs (median)"
    )
    print(f"transformers {ref:8.3f} s")
    print(f"dgemma       {mine:8.3f} s")
    print(f"speed-up     {ref / mine:8.2f}x   (identical ids: {same}/{total})")


if __name__ == "__main__":
    main()
