#!/usr/bin/env python3
"""One GPU run for dgemma_kernels: correctness and speed of the Triton grouped matmul and FP8 scaled_mm.

At the 26B model's shapes (MoE gate_up / down at a denoising step and at prefill, dense FP8 layers at M=256), each
kernel is checked against an fp32 dequantize-then-matmul of the same bytes and timed (median, cold L2) against the
reference path (dequantize, then `F.grouped_mm` / `F.linear`) and the bf16 product of the same shape. Bandwidth is
reported as a fraction of a measured device-to-device copy. Exits 1 if any check misses its bound.

    python3 scripts/gpu/check_kernels.py                # on the GPU machine, from the repo root
    python3 scripts/gpu/check_kernels.py --budget-s 120 # start no check after 120 s (default 450: 8 minutes in all)
    python3 scripts/gpu/check_kernels.py --dry-run-cpu  # tiny shapes through the Triton interpreter

Imports the installed dgemma_kernels: `pip install -e .` in the checkout first (run_all.sh does).
With OUT set, the table is also written to $OUT/check_kernels.json, rewritten after every check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

DRY_RUN = "--dry-run-cpu" in sys.argv
if DRY_RUN:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first triton import
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402
from dgemma_kernels import (  # noqa: E402
    Fp8Weight,
    Nvfp4Weight,
    QuantizedWeight,
    grouped_matmul_reference,
    quantize_fp8,
    quantize_nvfp4,
)
from dgemma_kernels.backend import scaled_mm_supported  # noqa: E402
from dgemma_kernels.scaled_mm import fp8_linear_scaled_mm, quantize_per_token  # noqa: E402
from dgemma_kernels.triton_moe import (  # noqa: E402
    TileConfig,
    default_fp8_mode,
    grouped_matmul_triton,
    launch_config,
    weight_operands,
)

BOUND = 1e-2  # relative Frobenius error vs fp32 of the same bytes: accumulation order and bf16 output only
FORMATS = ("bf16", "fp8-channel", "fp8-block", "nvfp4")


@dataclass(frozen=True)
class Shapes:
    experts: int
    top_k: int
    moe: dict[str, tuple[int, int]]  # projection -> (N, K)
    moe_rows: dict[str, int]  # phase -> M = tokens × top_k
    dense: dict[str, tuple[int, int]]
    dense_rows: int
    copy_bytes: int


H100 = Shapes(
    experts=128,
    top_k=8,
    moe={"gate_up": (1408, 2816), "down": (2816, 704)},
    moe_rows={"decode": 2048, "prefill": 16384},
    dense={"mlp gate_up": (4224, 2816), "mlp down": (2816, 2112), "q_proj": (4096, 2816), "o_proj full": (2816, 8192)},
    dense_rows=256,
    copy_bytes=1 << 30,
)
TINY = Shapes(
    experts=4,
    top_k=2,
    moe={"gate_up": (48, 256), "down": (256, 192)},  # 192: FP8 block groups of 128 leave a partial group
    moe_rows={"decode": 16, "prefill": 64},
    dense={"mlp up": (64, 128), "mlp down": (48, 192)},
    dense_rows=16,
    copy_bytes=1 << 24,
)


@dataclass
class Row:
    case: str
    M: int
    N: int
    K: int
    E: int
    nbytes: int = 0  # weights + activations + outputs
    config: str = ""
    err: float | None = None
    ok: bool = False
    kernel_us: float | None = None
    reference_us: float | None = None
    bf16_us: float | None = None
    best_alt: str = ""
    note: str = ""

    def fraction(self, copy_bw: float) -> float | None:
        return self.nbytes / (self.kernel_us * 1e-6) / copy_bw if self.kernel_us else None


def bench_us(fn: Callable[[], object], device: torch.device) -> float:
    """Median microseconds; on the GPU with the L2 flushed before each call (weights never stay in L2)."""
    if device.type == "cuda":
        return 1e3 * triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def baseline_us(fn: Callable[[], object], device: torch.device) -> float | None:
    """A comparison timing: its failure (say, no `F.grouped_mm` in this torch) must not fail the kernel's check."""
    try:
        return bench_us(fn, device)
    except Exception as exc:  # reported, then the table shows '-'
        print(f"  baseline failed: {type(exc).__name__}: {exc}"[:200], flush=True)
        return None


def copy_bandwidth(shapes: Shapes, device: torch.device) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    src = torch.empty(shapes.copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * shapes.copy_bytes / (bench_us(lambda: dst.copy_(src), device) * 1e-6)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def quantize(w: torch.Tensor, fmt: str) -> torch.Tensor | QuantizedWeight:
    """The formats' own quantizers, a few experts at a time to bound the fp32 workspace."""
    if fmt == "bf16":
        return w
    quantizer = {
        "fp8-channel": quantize_fp8,
        "fp8-block": lambda c: quantize_fp8(c, group=128),
        "nvfp4": quantize_nvfp4,
    }[fmt]
    if w.dim() == 2:
        return quantizer(w)
    parts = [quantizer(chunk) for chunk in w.split(16)]
    buffers = [torch.cat(b) for b in zip(*(list(p.buffers()) for p in parts), strict=True)]
    return Fp8Weight(*buffers, group=parts[0].group) if fmt.startswith("fp8") else Nvfp4Weight(*buffers)


def weight_bytes(w: torch.Tensor | QuantizedWeight) -> int:
    return w.nbytes if isinstance(w, QuantizedWeight) else w.numel() * w.element_size()


def routed_offsets(rows: int, shapes: Shapes, device: torch.device) -> torch.Tensor:
    """Cumulative rows per expert for tokens routed uniformly at random to top_k distinct experts."""
    tokens = rows // shapes.top_k
    experts = torch.rand(tokens, shapes.experts, device=device).topk(shapes.top_k).indices
    return torch.bincount(experts.flatten(), minlength=shapes.experts).cumsum(0).int()


def quantized_activations(x: torch.Tensor, weight: torch.Tensor | QuantizedWeight) -> torch.Tensor:
    """x as W8A8 sees it: quantized per token (and per K-group for block-scaled weights), back in fp32."""
    K = x.shape[1]
    group = weight.group if isinstance(weight, Fp8Weight) and weight.group < K else K
    q, scale = quantize_per_token(x, group % K)
    return q.float() * scale.repeat_interleave(group, dim=1)[:, :K]


def reference_fp32(x: torch.Tensor, weight: torch.Tensor | QuantizedWeight, offsets: torch.Tensor) -> torch.Tensor:
    """Dequantize to fp32, then one fp32 matmul per expert (offsets read on the host: this is the slow path)."""
    w32 = weight.float() if isinstance(weight, torch.Tensor) else weight.dequantize(torch.float32)
    w32 = w32 if w32.dim() == 3 else w32[None]
    out = torch.empty(x.shape[0], w32.shape[1], device=x.device)
    begin = 0
    for e, end in enumerate(offsets.tolist()):
        out[begin:end] = x[begin:end].float() @ w32[e].T
        begin = end
    return out


def alternatives(config: TileConfig, group: int) -> list[TileConfig]:
    """Neighbours of the table's choice: another BLOCK_M, the other BLOCK_N and BLOCK_K, one more pipeline stage."""
    alts = [
        replace(config, block_m=16 if config.block_m == 32 else 32),
        replace(config, block_n=64 if config.block_n == 128 else 128),
        replace(config, block_k=64 if config.block_k == 128 else 128),
        replace(config, num_stages=config.num_stages + 1),
    ]
    return [a for a in alts if not group or group % a.block_k == 0]


def describe(config: TileConfig) -> str:
    return f"{config.block_m}x{config.block_n}x{config.block_k} w{config.num_warps} s{config.num_stages}"


class Run:
    """The checks in priority order, each recorded (and the report rewritten) as it ends, so a run cut short by an
    outer timeout still leaves its results; timing alternatives come last, while the budget lasts."""

    def __init__(self, shapes: Shapes, device: torch.device, budget_s: float, device_name: str) -> None:
        self.shapes, self.device, self.budget_s, self.device_name = shapes, device, budget_s, device_name
        self.start = time.monotonic()
        self.rows: list[Row] = []
        self.later: list[Callable[[], None]] = []
        self.weights: dict[tuple[str, str], torch.Tensor | QuantizedWeight] = {}
        self.copy_bw = copy_bandwidth(shapes, device)
        print(f"copy bandwidth {self.copy_bw / 1e9:.0f} GB/s (read + write)\n{HEADER}", flush=True)

    def out_of_time(self, reserve_s: float = 0) -> bool:
        return time.monotonic() - self.start > self.budget_s - reserve_s

    def record(self, row: Row, body: Callable[[Row], None]) -> None:
        """Run one check; an exception fails that row only, so one bug does not hide the rest."""
        if self.out_of_time():
            row.note = "skipped: out of time"
        else:
            try:
                body(row)
            except Exception as exc:  # any failure is a result to report
                row.ok, row.note = False, f"{type(exc).__name__}: {exc}"[:200]
        self.rows.append(row)
        print(table_line(row, self.copy_bw), flush=True)
        self.write_report()

    def weight(self, proj: str, fmt: str) -> torch.Tensor | QuantizedWeight:
        """Each projection's bf16 weight, drawn once, and its quantized forms, made on first use."""
        if (proj, fmt) not in self.weights:
            if fmt == "bf16":
                N, K = self.shapes.moe[proj]
                w = torch.randn(self.shapes.experts, N, K, device=self.device) / K**0.5
                self.weights[proj, fmt] = w.bfloat16()
            else:
                self.weights[proj, fmt] = quantize(self.weight(proj, "bf16"), fmt)
        return self.weights[proj, fmt]

    def moe_inputs(self, rows: int, K: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(rows, K, device=self.device).bfloat16(), routed_offsets(rows, self.shapes, self.device)

    def moe(self, proj: str, phase: str) -> None:
        (N, K), E, M = self.shapes.moe[proj], self.shapes.experts, self.shapes.moe_rows[phase]
        x, offsets = self.moe_inputs(M, K)
        bf16_us: list[float | None] = []
        for fmt in FORMATS:

            def body(row: Row, fmt: str = fmt) -> None:
                w_bf16, weight = self.weight(proj, "bf16"), self.weight(proj, fmt)
                row.nbytes = weight_bytes(weight) + x.numel() * 2 + M * N * 2
                self.check_triton(row, x, weight, offsets, alternatives=phase == "decode")
                row.reference_us = baseline_us(lambda: grouped_matmul_reference(x, weight, offsets), self.device)
                if not bf16_us:
                    bf16_us.append(
                        baseline_us(lambda: F.grouped_mm(x, w_bf16.transpose(1, 2), offs=offsets), self.device)
                    )
                row.bf16_us = bf16_us[0]

            self.record(Row(f"moe {proj} {phase} {fmt}", M, N, K, E), body)

    def check_triton(self, row: Row, x: torch.Tensor, weight, offsets: torch.Tensor, alternatives: bool) -> None:
        """The Triton kernel as the runtime calls it on this device, against fp32 products of the operands it uses
        (with W8A8, the activations quantized per token); its table neighbours are timed later."""
        mode = default_fp8_mode(self.device) if isinstance(weight, Fp8Weight) else None
        ref = reference_fp32(quantized_activations(x, weight) if mode == "w8a8" else x, weight, offsets)
        config = launch_config(x.shape[0], weight_operands(weight), self.device)
        row.config = describe(config)
        out = grouped_matmul_triton(x, weight, offsets)
        row.err = rel_err(out, ref)
        row.ok = row.err <= BOUND
        row.kernel_us = bench_us(lambda: grouped_matmul_triton(x, weight, offsets), self.device)
        if mode == "w8a8":  # the W8A16 paths in the same run: hardware conversion, bit decoding
            times = " ".join(
                f"{m} {bench_us(lambda m=m: grouped_matmul_triton(x, weight, offsets, fp8_mode=m), self.device):.0f}us"
                for m in ("cvt", "bits")
            )
            row.note = f"vs unquantized x {rel_err(out, reference_fp32(x, weight, offsets)):.1e}; {times}"
        if alternatives:
            self.later.append(lambda: self.try_alternatives(row, config, weight, x, offsets, ref))

    def try_alternatives(
        self, row: Row, config: TileConfig, weight, x: torch.Tensor, offsets: torch.Tensor, ref: torch.Tensor
    ) -> None:
        """Time the table's neighbours; a wrong answer from any of them fails the row."""
        best = (row.kernel_us, describe(config))
        for alt in alternatives(config, weight_operands(weight).group):
            if self.out_of_time():
                break
            err = rel_err(grouped_matmul_triton(x, weight, offsets, alt), ref)
            if not err <= BOUND:
                row.ok = False
                row.note += f" {describe(alt)} err {err:.2e};"
                continue
            us = bench_us(lambda a=alt: grouped_matmul_triton(x, weight, offsets, a), self.device)
            best = min(best, (us, describe(alt)))
        row.best_alt = f"{best[1]} {best[0]:.0f}us"
        print(f"  {row.case}: best {row.best_alt}{row.note}", flush=True)
        self.write_report()

    def dense(self, name: str, N: int, K: int) -> None:
        M, device = self.shapes.dense_rows, self.device
        w_bf16 = (torch.randn(N, K, device=device) / K**0.5).bfloat16()
        weight = quantize_fp8(w_bf16)
        x = torch.randn(M, K, device=device).bfloat16()
        offsets = torch.full((1,), M, dtype=torch.int32, device=device)
        nbytes = weight.nbytes + M * K * 2 + M * N * 2
        reference_us = baseline_us(lambda: F.linear(x, weight.dequantize(x.dtype)), device)
        bf16_us = baseline_us(lambda: F.linear(x, w_bf16), device)

        def triton_body(row: Row) -> None:
            self.check_triton(row, x, weight, offsets, alternatives=True)
            row.reference_us, row.bf16_us = reference_us, bf16_us

        def scaled_mm_body(row: Row) -> None:
            w32 = weight.dequantize(torch.float32)
            xq, scale = quantize_per_token(x)
            out = fp8_linear_scaled_mm(x, weight)
            row.err = rel_err(out, (xq.float() * scale) @ w32.T)  # the same quantized operands
            row.ok = row.err <= BOUND
            row.note = f"vs unquantized x {rel_err(out, x.float() @ w32.T):.1e}"
            row.kernel_us = bench_us(lambda: fp8_linear_scaled_mm(x, weight), device)
            row.reference_us, row.bf16_us = reference_us, bf16_us

        self.record(Row(f"dense {name} fp8 triton", M, N, K, 1, nbytes), triton_body)
        self.record(Row(f"dense {name} fp8 scaled_mm", M, N, K, 1, nbytes), scaled_mm_body)

    def cuda_graph(self) -> None:
        """The launcher must be capturable: no host reads of offsets, fixed launch shapes."""
        (N, K), M = self.shapes.moe["gate_up"], self.shapes.moe_rows["decode"]

        def body(row: Row) -> None:
            weight = self.weight("gate_up", "nvfp4")
            x, offsets = self.moe_inputs(M, K)
            grouped_matmul_triton(x, weight, offsets)  # compile outside the capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = grouped_matmul_triton(x, weight, offsets)
            x_new, offsets_new = self.moe_inputs(M, K)
            x.copy_(x_new)
            offsets.copy_(offsets_new)
            graph.replay()
            row.err = rel_err(out, grouped_matmul_triton(x_new, weight, offsets_new))
            row.ok = row.err <= 1e-6

        self.record(Row("cuda graph replay, new routing", M, N, K, self.shapes.experts), body)

    def failed(self) -> list[str]:
        return [r.case for r in self.rows if not r.ok and not r.note.startswith("skipped")]

    def skipped(self) -> list[str]:
        return [r.case for r in self.rows if r.note.startswith("skipped")]

    def write_report(self) -> None:
        if not os.environ.get("OUT"):
            return
        report = {
            "device": self.device_name,
            "torch": torch.__version__,
            "triton": triton.__version__,
            "copy_bandwidth_bytes_per_s": self.copy_bw,
            "rows": [asdict(r) | {"fraction_of_copy": r.fraction(self.copy_bw)} for r in self.rows],
            "failed": self.failed(),
            "skipped": self.skipped(),
            "elapsed_s": time.monotonic() - self.start,
        }
        out_dir = Path(os.environ["OUT"])
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "check_kernels.json").write_text(json.dumps(report, indent=1))


HEADER = (
    f"{'case':<34} {'M':>6} {'N':>5} {'K':>5} {'err':>8} {'ok':>4} {'kernel':>8} {'ref':>8} {'bf16':>8} {'frac':>5}"
    f"  {'config':<17} best alternative"
)


def table_line(r: Row, copy_bw: float) -> str:
    err = f"{r.err:.1e}" if r.err is not None else "-"
    times = " ".join(f"{t:8.0f}" if t else f"{'-':>8}" for t in (r.kernel_us, r.reference_us, r.bf16_us))
    frac = r.fraction(copy_bw)
    frac_s = f"{frac:5.2f}" if frac else f"{'-':>5}"
    ok = "yes" if r.ok else "skip" if r.note.startswith("skipped") else "NO"
    line = f"{r.case:<34} {r.M:>6} {r.N:>5} {r.K:>5} {err:>8} {ok:>4} {times} {frac_s}"
    return f"{line}  {r.config:<17} {r.best_alt} {r.note}".rstrip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run-cpu", action="store_true", help="tiny shapes on the CPU via the Triton interpreter")
    parser.add_argument("--budget-s", type=float, default=450, help="start no check after this many seconds")
    args = parser.parse_args()
    if not args.dry_run_cpu and not torch.cuda.is_available():
        print("no CUDA device: use --dry-run-cpu", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run_cpu else "cuda")
    shapes = TINY if args.dry_run_cpu else H100
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 references must be fp32
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (interpreter)"
    print(f"{name}; torch {torch.__version__}, triton {triton.__version__}; scaled_mm {scaled_mm_supported(device)}")

    run = Run(shapes, device, args.budget_s, name)
    for proj in shapes.moe:
        run.moe(proj, "decode")
    for dense_name, (N, K) in shapes.dense.items():
        run.dense(dense_name, N, K)
    if device.type == "cuda":
        run.cuda_graph()
    for proj in shapes.moe:
        run.moe(proj, "prefill")
    while run.later and not run.out_of_time():
        run.later.pop(0)()

    print(f"\ncopy bandwidth {run.copy_bw / 1e9:.0f} GB/s; frac = (weights + x + out bytes) / kernel time / copy")
    print(HEADER)
    for row in run.rows:
        print(table_line(row, run.copy_bw))
    print("times: median us; kernel = Triton or scaled_mm, ref = dequantize then torch, bf16 = same shape in bf16")
    failed, skipped = run.failed(), run.skipped()
    ok = len(run.rows) - len(failed) - len(skipped)
    print(f"{ok} ok, {len(failed)} failed, {len(skipped)} skipped; {time.monotonic() - run.start:.0f} s")
    run.write_report()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
