"""Throughput of the weight quantizers (quantize_nvfp4, quantize_fp8) on the CPU, in GB/s of bf16 input.

    OMP_NUM_THREADS=1 python scripts/bench_quantize.py --threads 1     # one core
    python scripts/bench_quantize.py [--threads 2] [--runs 5] [--experts 128]

Shapes: one MoE expert's gate/up and down projections ([704, 1408], [1408, 704]), a stack of `--experts` of them
([E, 704, 1408]) quantized in one call as loading does, and a dense [4096, 1408] weight. Each figure is
the best of `--runs`; the plain `weight.float()` copy beside them, timed in the same run, gives the scale (a pass
over the weight at memory speed). Needs dgemma_kernels installed (`pip install -e .`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from dgemma_kernels import quantize_fp8, quantize_nvfp4

QUANTIZERS: dict[str, Callable[[torch.Tensor], object]] = {
    "float() copy": lambda w: w.float(),
    "nvfp4": quantize_nvfp4,
    "fp8 per row": quantize_fp8,
    "fp8 per 128": lambda w: quantize_fp8(w, group=128),
}


def best_seconds(quantize: Callable[[torch.Tensor], object], weights: list[torch.Tensor], runs: int) -> float:
    """Best wall time of quantizing every weight in turn, after a warm-up pass."""
    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        for weight in weights:
            quantize(weight)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="default: torch's, %(default)s")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--experts", type=int, default=128, help="experts in the stacked case")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)

    def weight(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).bfloat16()

    cases = {
        "expert [704, 1408]": [weight(704, 1408)],
        "expert [1408, 704]": [weight(1408, 704)],
        f"[{args.experts}, 704, 1408] stacked": [weight(args.experts, 704, 1408)],
        "dense [4096, 1408]": [weight(4096, 1408)],
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); GB/s of bf16 input, best of {args.runs}")
    print(f"{'':28s}" + "".join(f"{name:>14s}" for name in QUANTIZERS))
    for case, weights in cases.items():
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        rates = [nbytes / best_seconds(quantize, weights, args.runs) / 1e9 for quantize in QUANTIZERS.values()]
        print(f"{case:28s}" + "".join(f"{rate:14.2f}" for rate in rates))


if __name__ == "__main__":
    main()
