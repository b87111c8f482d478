#!/usr/bin/env python3
"""Compile every Triton kernel the runtime launches, at the 26B model's shapes, for a GPU this machine need not have.

The real launchers run on CPU tensors; a compile-only Triton driver turns each launch into a compilation for the
target (sm90 = H100/H200 by default), with the argument specialisation a real launch would get, and nothing runs.
For each kernel: registers and spilled bytes (ptxas), and the instructions of its main loop (the SASS between the
loop's label and its backward branch, from nvdisasm), with the commonest opcodes. A decoding kernel's loop is its
cost per K-step: a memory-bound tile should spend most of it on loads and MMA, not on converting weights. (The
row kernels have no loop; on sm100 Triton lays some loops out in a way this does not find: '-'.)

    python3 scripts/inspect_kernels.py                 # sm90; --arch 89,90,100 for several
    python3 scripts/inspect_kernels.py --check         # exit 1 if a kernel fails to compile or spills

Needs Triton's NVIDIA backend (ptxas and nvdisasm ship in the Triton wheel), no GPU and no CUDA install. Do not
set TRITON_INTERPRET. Imports the installed dgemma_kernels (`pip install -e .` in the checkout).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton
from dgemma_kernels import Fp8Weight, Nvfp4Weight, backend, experts_forward, triton_fused
from dgemma_kernels import triton_moe as moe
from dgemma_kernels.triton_fused import (
    combine_feed_forward_triton,
    gelu_mul_triton,
    quantize_fp8_triton,
    rms_norm_rope_triton,
    rms_norm_triton,
    route_triton,
    router_input_triton,
    sample_step_triton,
    softcap_logits_triton,
)
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime.jit import JITFunction

TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
TOKENS, TOP_K, EXPERTS, HIDDEN = 256, 8, 128, 2816  # one denoising step of the 26B model


class CompileOnly(DriverBase):
    """Just enough of a driver for Triton to specialise a launch and compile it for `target`."""

    def __init__(self, target: GPUTarget) -> None:
        self.target = target

    @classmethod
    def is_active(cls) -> bool:
        return True

    def map_python_to_cpp_type(self, ty: str) -> str:
        raise NotImplementedError

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def get_benchmarker(self):
        raise NotImplementedError

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


@dataclass
class Compiled:
    case: str
    kernel: str
    constants: str
    binary: object  # triton CompiledKernel
    registers: int = 0
    spilled: int = 0
    loop: list[str] = field(default_factory=list)


def capture_compilations(sink: list[tuple[str, object]]) -> None:
    """`kernel[grid](...)` compiles (Triton's warm-up path) instead of launching."""

    def getitem(self: JITFunction, grid):
        def launch(*args, **kwargs):
            sink.append((self.fn.__name__, self.run(*args, grid=grid, warmup=True, **kwargs)))

        return launch

    JITFunction.__getitem__ = getitem


def cases(arch: int) -> dict[str, Callable[[], object]]:
    """The launches of one 26B decoder layer in a denoising step (and the block-scaled FP8 dense product), as the
    runtime makes them on a GPU of this architecture. Weights are uninitialised: only shapes and layouts matter."""
    # The launcher picks FP8 modes and tiles from the device's capability: answer for the target instead.
    backend.on_gpu = lambda device: True  # the CPU tensors stand for CUDA ones
    moe.scaled_mm_supported = lambda device: arch >= 89
    moe.is_hopper = lambda device: arch // 10 == 9
    bf16 = torch.bfloat16
    rows = TOKENS * TOP_K
    # Every expert gets its share of the routed rows, as in a denoising step (~16 each).
    offsets = torch.linspace(rows / EXPERTS, rows, EXPERTS).round().int()
    x = torch.randn(rows, HIDDEN, dtype=bf16)
    h = torch.randn(1, TOKENS, HIDDEN, dtype=bf16)
    weight = torch.ones(HIDDEN, dtype=bf16)

    def fp8(*shape: int, group: int = 0) -> Fp8Weight:
        *lead, N, K = shape
        scales = (*lead, N, -(-K // group) if group else 1)
        return Fp8Weight(torch.empty(shape, dtype=torch.float8_e4m3fn), torch.ones(scales), group or K)

    def nvfp4(*shape: int) -> Nvfp4Weight:
        *lead, K = shape
        return Nvfp4Weight(
            torch.empty(*lead, K // 2, dtype=torch.uint8),
            torch.empty(*lead, K // 16, dtype=torch.float8_e4m3fn),
            torch.ones(lead),
        )

    gate_up = (EXPERTS, 1408, HIDDEN)
    down_x = torch.randn(rows, 704, dtype=bf16)
    down = (EXPERTS, HIDDEN, 704)
    table = {
        "rms_norm": lambda: rms_norm_triton(h, weight, 1e-6),
        "rms_norm + residual": lambda: rms_norm_triton(h, weight, 1e-6, h),
        "q norm + rope (sliding, D 256)": lambda: rms_norm_rope_triton(
            torch.randn(1, TOKENS, 16, 256, dtype=bf16), torch.ones(256, dtype=bf16), *torch.ones(2, TOKENS, 256), 1e-6
        ),
        "feed-forward combine": lambda: combine_feed_forward_triton(h, h, h, (weight,) * 3, weight[:1], 1e-6),
        "gelu * up (experts)": lambda: gelu_mul_triton(*torch.randn(rows, 1408, dtype=bf16).chunk(2, dim=-1)),
        "router input": lambda: router_input_triton(h, weight, HIDDEN**-0.5, 1e-6),
        "route (128 experts, top 8)": lambda: route_triton(torch.randn(TOKENS, EXPERTS, dtype=bf16), TOP_K, weight),
        "softcap (lm_head output)": lambda: softcap_logits_triton(torch.empty(TOKENS, 4096, dtype=bf16), 30.0),
        "sample step (bf16 fed back)": lambda: sample_step_triton(
            torch.empty(TOKENS, 262144), 0.8, torch.ones(1, dtype=torch.int64), bf16
        ),
        "quantize fp8 per token": lambda: quantize_fp8_triton(x, 0),
        "quantize fp8 per 128": lambda: quantize_fp8_triton(x, 128),
        "moe gate_up bf16": lambda: moe.grouped_matmul_triton(x, torch.empty(gate_up, dtype=bf16), offsets),
        "moe down bf16": lambda: moe.grouped_matmul_triton(down_x, torch.empty(down, dtype=bf16), offsets),
        "moe gate_up nvfp4": lambda: moe.grouped_matmul_triton(x, nvfp4(*gate_up), offsets),
        "moe down nvfp4": lambda: moe.grouped_matmul_triton(down_x, nvfp4(*down), offsets),
        "dense gate_up fp8 block 128": lambda: moe.grouped_matmul_triton(
            h[0], fp8(4224, HIDDEN, group=128), torch.tensor([TOKENS], dtype=torch.int32)
        ),
    }
    # Whole MoE layers as the runtime runs them: the token rows gathered and the weighted pairs scattered by the
    # kernel itself, with gelu * up and (FP8) the activation quantizer between.
    routes = torch.rand(TOKENS, EXPERTS).topk(TOP_K).indices
    route_weights = torch.rand(TOKENS, TOP_K)
    formats = {
        "bf16": lambda shape: torch.empty(shape, dtype=bf16),
        "fp8": lambda shape: fp8(*shape),
        "nvfp4": lambda shape: nvfp4(*shape),
    }
    for name, make in formats.items():
        table[f"experts {name} (runtime)"] = lambda make=make: experts_forward(
            h[0], route_weights, routes, make(gate_up), make(down)
        )
    for mode in moe.FP8_MODES:
        if mode != "bits" and arch < 89:
            continue
        for name, activations, shape in (("gate_up", x, gate_up), ("down", down_x, down)):
            table[f"moe {name} fp8 {mode}"] = lambda m=mode, a=activations, s=shape: moe.grouped_matmul_triton(
                a, fp8(*s), offsets, fp8_mode=m
            )
    return table


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spilled bytes) as ptxas reports them."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        ptxas = TOOLS / "ptxas-blackwell" if (TOOLS / "ptxas-blackwell").exists() else TOOLS / "ptxas"
        suffix = "a" if arch >= 90 else ""
        log = subprocess.run(
            [str(ptxas), "-v", f"-arch=sm_{arch}{suffix}", f.name, "-o", "/dev/null"], capture_output=True, text=True
        ).stderr
    registers = re.search(r"Used (\d+) registers", log)
    spilled = re.search(r"(\d+) bytes spill stores", log)
    return int(registers.group(1)) if registers else -1, int(spilled.group(1)) if spilled else 0


def main_loop(cubin: bytes) -> list[str]:
    """The SASS of the longest backward-branch loop: a label, then instructions up to a branch back to it."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([str(TOOLS / "nvdisasm"), "-c", f.name], capture_output=True, text=True).stdout
    lines = sass.splitlines()
    labels: dict[str, int] = {}
    longest: list[str] = []
    for i, line in enumerate(lines):
        if label := re.match(r"^(\.L_x_\d+):", line):
            labels[label.group(1)] = i
        branch = re.search(r"BRA `\((\.L_x_\d+)\)", line)
        if branch and branch.group(1) in labels:
            body = [x for x in lines[labels[branch.group(1)] : i + 1] if re.search(r"/\*[0-9a-f]{4}\*/", x)]
            longest = max(longest, body, key=len)
    return longest


def opcode(instruction: str) -> str:
    words = re.sub(r"/\*.*?\*/", "", instruction).split()
    words = words[1:] if words and words[0].startswith("@") else words  # a predicate guard
    return words[0].split(".")[0] if words else ""


def inspect(arch: int) -> list[Compiled]:
    sink: list[tuple[str, object]] = []
    capture_compilations(sink)
    triton.runtime.driver.set_active(CompileOnly(GPUTarget("cuda", arch, 32)))
    for module in (triton_fused, moe):  # kernels remember their first target
        for kernel in vars(module).values():
            if isinstance(kernel, JITFunction):
                kernel.device_caches.clear()
    results = []
    for case, launch in cases(arch).items():
        sink.clear()
        launch()
        for name, binary in sink:
            meta = binary.metadata
            constants = f"w{meta.num_warps} s{meta.num_stages}"
            entry = Compiled(case, name, constants, binary)
            entry.registers, entry.spilled = ptxas_usage(binary.asm["ptx"], arch)
            entry.loop = main_loop(binary.asm["cubin"])
            results.append(entry)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="90", help="compute capabilities, e.g. 89,90,100")
    parser.add_argument("--check", action="store_true", help="exit 1 on a compile failure or a spill")
    parser.add_argument("--json", type=Path, help="also write every kernel's numbers and loop opcodes here")
    args = parser.parse_args()
    failed = False
    report = []
    for arch in (int(a) for a in args.arch.split(",")):
        print(f"sm{arch}: {'case':34} {'kernel':30} {'launch':7} {'regs':>4} {'spill':>5} {'loop':>5}  commonest ops")
        try:
            compiled = inspect(arch)
        except Exception as exc:  # a compile error is this script's finding: report it in one line
            print(f"  compile failed: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
            failed = True
            continue
        for c in compiled:
            ops = collections.Counter(opcode(x) for x in c.loop).most_common(6)
            loop = f"{len(c.loop):5d}  " + ", ".join(f"{op} {n}" for op, n in ops) if len(c.loop) > 1 else f"{'-':>5}"
            print(f"      {c.case:34} {c.kernel:30} {c.constants:7} {c.registers:4d} {c.spilled:5d} {loop}")
            failed |= c.spilled > 0 or c.registers < 0
            report.append(
                {"arch": arch, "case": c.case, "kernel": c.kernel, "registers": c.registers, "spilled": c.spilled}
                | {"loop": len(c.loop), "loop_ops": collections.Counter(opcode(x) for x in c.loop)}
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    sys.exit(1 if failed and args.check else 0)


if __name__ == "__main__":
    main()
