"""Every Triton kernel the runtime launches compiles for an H100 (sm90) and an RTX 4090 (sm89), without spilling
registers. The interpreter runs the kernels' arithmetic on the CPU; only this compiles them as a GPU would, through
the launchers with their real arguments (scripts/inspect_kernels.py; no GPU or CUDA install needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "inspect_kernels.py"
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[dict]:
    if not (TOOLS / "nvdisasm").exists():
        pytest.skip("this Triton ships no NVIDIA backend tools")
    report = tmp_path_factory.mktemp("inspect") / "kernels.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, str(SCRIPT), "--arch", "89,90", "--check", "--json", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]  # a compile failure or a spill
    return json.loads(report.read_text())


def test_every_launch_compiles_for_both_architectures(compiled):
    launches = {arch: [(e["case"], e["kernel"]) for e in compiled if e["arch"] == arch] for arch in (89, 90)}
    assert launches[89] and launches[89] == launches[90]
    assert all(entry["spilled"] == 0 and entry["registers"] > 0 for entry in compiled)


def loop(compiled: list[dict], arch: int, case: str) -> dict:
    """The grouped product's launch in `case` (a W8A8 case quantizes its activations in a launch before it)."""
    product = (arch, case, "_grouped_matmul_kernel")
    return next(entry for entry in compiled if (entry["arch"], entry["case"], entry["kernel"]) == product)


def test_fp8_experts_use_fp8_tensor_cores(compiled):
    """W8A8 must reach the FP8 MMA instructions (wgmma on Hopper, mma.sync on Ada) instead of converting operands,
    so its main loop is a fraction of the W8A16 ones."""
    hopper, ada = loop(compiled, 90, "moe gate_up fp8 w8a8"), loop(compiled, 89, "moe gate_up fp8 w8a8")
    assert hopper["loop_ops"].get("QGMMA", 0) > 0 and ada["loop_ops"].get("QMMA", 0) > 0
    runtime = [e for e in compiled if (e["arch"], e["case"]) == (90, "experts fp8 (runtime)")]
    assert sum(e["loop_ops"].get("QGMMA", 0) > 0 for e in runtime) == 2  # both projections, as the model runs them
    for arch, w8a8 in ((90, hopper), (89, ada)):
        assert w8a8["loop"] * 3 < loop(compiled, arch, "moe gate_up fp8 cvt")["loop"]


def test_nvfp4_experts_use_hoppers_wide_tiles(compiled):
    """On sm90, NVFP4 takes 64-row tiles whose decoded weights feed wgmma from shared memory."""
    assert loop(compiled, 90, "moe gate_up nvfp4")["loop_ops"].get("HGMMA", 0) > 0
