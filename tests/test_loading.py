"""Loading as events: in order, with totals that match the checkpoint; a load stopped midway (here by the progress
callback raising KeyboardInterrupt, as Ctrl-C does) keeps nothing, and the next load works; scripts/bench_load.py
runs end to end on a small checkpoint."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import dgemma_runtime
import pytest
import torch
from dgemma_kernels import QuantizedWeight
from dgemma_runtime import LoadFinished, LoadProgress, LoadStarted, inspect, reading
from safetensors.torch import load_file, save_file

from tests.support.checkpoints import TinySpec, write_checkpoint
from tests.support.quant_checkpoints import write_quantized
from tests.support.scripts import run_script


def shard(folder: Path, parts: int = 3) -> Path:
    """Split model.safetensors into `parts` shards with an index, as larger checkpoints come."""
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    weight_map = {}
    for i in range(parts):
        file = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = names[i::parts]
        save_file({n: tensors[n] for n in chunk}, folder / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(chunk, file)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture(scope="module")
def full_precision(tmp_path_factory) -> Path:
    return shard(write_checkpoint(TinySpec(), tmp_path_factory.mktemp("bf16") / "ckpt"))


@pytest.fixture(scope="module")
def nvfp4(tmp_path_factory) -> Path:
    source = write_checkpoint(TinySpec(), tmp_path_factory.mktemp("src") / "ckpt")
    return shard(write_quantized(source, tmp_path_factory.mktemp("nvfp4") / "ckpt", "ct-nvfp4"))


def events_of(folder: Path, **options) -> list:
    events: list = []
    dgemma_runtime.load(folder, device="cpu", progress=events.append, **options)
    return events


def check_order(events: list, folder: Path) -> LoadStarted:
    """Started first, Finished last, each phase's progress never going back and ending at its total."""
    started, *progress, finished = events
    assert isinstance(started, LoadStarted) and isinstance(finished, LoadFinished)
    assert all(isinstance(event, LoadProgress) for event in progress)
    info = inspect(folder)
    read = {name: info.tensors[name].nbytes for name in info.plan.expected}
    assert (started.total_bytes, started.tensors) == (sum(read.values()), len(read))
    assert started.phases["read"] == started.total_bytes
    for phase, total in started.phases.items():
        steps = [(e.bytes, e.tensors) for e in progress if e.phase == phase]
        assert steps == sorted(steps) and len(set(steps)) == len(steps), phase  # forward, one event per change
        assert steps[-1][0] == total, phase
    last_read = [e for e in progress if e.phase == "read"][-1]
    assert last_read.tensors == started.tensors
    assert finished.bytes == started.total_bytes and finished.seconds > 0
    return started


def test_a_load_reports_its_reads_in_order_with_the_checkpoints_totals(full_precision):
    started = check_order(events_of(full_precision, dtype="float32"), full_precision)
    assert set(started.phases) == {"read"}  # nothing to quantize, nothing to move on the CPU


def test_a_prequantized_load_reads_the_quantized_bytes(nvfp4, full_precision):
    started = check_order(events_of(nvfp4, dtype="bfloat16"), nvfp4)
    assert set(started.phases) == {"read"}
    assert started.total_bytes < inspect(full_precision).loaded(torch.float32)["float32"] / 2


def test_quantize_at_load_is_a_second_phase_behind_the_reads(full_precision):
    events = events_of(full_precision, dtype="bfloat16", quant="nvfp4", quant_dense=True)
    started = check_order(events, full_precision)
    info = inspect(full_precision)
    linears = [name for stored in info.plan.stored() for name in stored.expected]
    fused = [name for name in info.plan.plain if ".experts." in name]
    assert started.phases["quantize"] == sum(info.tensors[name].nbytes for name in linears + fused)
    read = 0
    for event in events[1:-1]:
        if event.phase == "read":
            read = event.bytes
        else:
            assert event.bytes <= read, "quantized before it was read"


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_reading_ahead_in_threads_loads_the_same_weights(full_precision, nvfp4, monkeypatch, workers):
    for folder in (full_precision, nvfp4):
        reference = dgemma_runtime.load(folder, device="cpu", dtype="bfloat16").model.state_dict()
        monkeypatch.setattr(reading, "READ_WORKERS", workers)
        monkeypatch.setattr(reading, "READ_AHEAD_BYTES", 4096)  # the window full most of the time
        loaded = dgemma_runtime.load(folder, device="cpu", dtype="bfloat16").model.state_dict()
        monkeypatch.undo()
        assert loaded.keys() == reference.keys()
        for name, tensor in reference.items():
            assert torch.equal(loaded[name].view(torch.uint8), tensor.view(torch.uint8)), name


def test_short_reads_and_small_calls_fill_every_stacked_expert(full_precision, nvfp4, monkeypatch):
    """A vectored read may return fewer bytes than asked; the reader goes on where it stopped, and calls split by
    READ_CHUNK and IOV_MAX land each tensor in its place all the same."""
    preadv = reading._preadv
    for folder in (full_precision, nvfp4):
        reference = dgemma_runtime.load(folder, device="cpu", dtype="bfloat16").model.state_dict()
        monkeypatch.setattr(reading, "_preadv", lambda fd, views, offset: preadv(fd, [views[0][:7]], offset))
        monkeypatch.setattr(reading, "READ_CHUNK", 100)
        monkeypatch.setattr(reading, "IOV_MAX", 3)
        loaded = dgemma_runtime.load(folder, device="cpu", dtype="bfloat16").model.state_dict()
        monkeypatch.undo()
        for name, tensor in reference.items():
            assert torch.equal(loaded[name].view(torch.uint8), tensor.view(torch.uint8)), name


def test_where_the_os_refuses_sendfile_mapped_bytes_are_read_through_a_buffer(full_precision, monkeypatch):
    calls = []
    preadv = reading._preadv

    def refuse(*args):
        raise OSError(22, "sendfile goes to sockets only here")

    def counted(fd, views, offset):
        calls.append(sum(len(view) for view in views))
        return preadv(fd, views, offset)

    monkeypatch.setattr(os, "sendfile", refuse)
    monkeypatch.setattr(reading, "_preadv", counted)
    started = check_order(events_of(full_precision, dtype="float32"), full_precision)
    assert sum(calls) == started.total_bytes  # every byte read through the buffer instead


def test_experts_stored_in_different_forms_are_refused_in_one_line(tmp_path):
    source = write_checkpoint(TinySpec(), tmp_path / "bf16")
    folder = write_quantized(source, tmp_path / "nvfp4", "ct-nvfp4")
    tensors = load_file(folder / "model.safetensors")
    base = "model.decoder.layers.0.experts.1.up_proj"
    packed = tensors.pop(f"{base}.weight_packed")
    del tensors[f"{base}.weight_scale"], tensors[f"{base}.weight_global_scale"]
    tensors[f"{base}.weight"] = torch.zeros(packed.shape[0], 2 * packed.shape[1], dtype=torch.bfloat16)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(dgemma_runtime.CheckpointError, match=r"^layers\.0\.experts\.gate_up_proj: experts stored"):
        dgemma_runtime.load(folder, device="cpu")


def live_tensors() -> dict[int, object]:
    gc.collect()
    return {id(o): o for o in gc.get_objects() if issubclass(type(o), (torch.Tensor, QuantizedWeight))}


class Interrupt:
    """A progress callback that raises KeyboardInterrupt, as Ctrl-C would, once `phase` is half done."""

    def __init__(self, phase: str) -> None:
        self.phase, self.total, self.at = phase, 0, 0

    def __call__(self, event) -> None:
        if isinstance(event, LoadStarted):
            self.total = event.phases[self.phase]
        elif isinstance(event, LoadProgress) and event.phase == self.phase and event.bytes >= self.total / 2:
            self.at = event.bytes
            raise KeyboardInterrupt


@pytest.mark.parametrize(("fixture", "quant"), [("full_precision", None), ("full_precision", "fp8"), ("nvfp4", None)])
def test_an_interrupted_load_keeps_nothing_and_the_next_load_works(request, monkeypatch, fixture, quant):
    folder = request.getfixturevalue(fixture)
    monkeypatch.setattr(reading, "READ_AHEAD_BYTES", 4096)  # reads keep pace with the weights built from them
    before = live_tensors()
    interrupt = Interrupt("quantize" if quant else "read")
    with pytest.raises(KeyboardInterrupt) as caught:
        dgemma_runtime.load(folder, device="cpu", dtype="bfloat16", quant=quant, progress=interrupt)
    assert 0 < interrupt.at < interrupt.total, "not stopped midway"
    leaked = [o for i, o in live_tensors().items() if i not in before]
    assert not leaked, f"{len(leaked)} tensors outlive the interrupted load, e.g. {leaked[0]!r:.200}"
    assert not [t for t in threading.enumerate() if t.name.startswith("dgemma-read")], "readers still running"
    del caught
    check_order(events_of(folder, dtype="bfloat16", quant=quant), folder)  # the next load goes through


def test_bench_load_dry_run_reports_every_rate():
    lines = run_script("bench_load", "--dry-run", timeout=300)
    assert re.fullmatch(
        r"load: bf16 \d+\.\d\dx, prequantized \d+\.\d\dx of the read rate, quantize-at-load \d+\.\d\d GB/s", lines[-1]
    ), lines[-1]
    for row in ("read bf16", "load bf16", "read nvfp4", "load nvfp4", "--quant fp8", "--quant nvfp4"):
        assert any(row in line for line in lines), row


def test_bench_quantize_reports_every_quantizer_on_every_shape():
    lines = run_script("bench_quantize", "--runs", "1", "--experts", "2", "--threads", "1", timeout=120)
    header, columns, *rows = lines
    assert header.startswith("torch ") and "1 thread(s)" in header
    assert columns.split() == ["float()", "copy", "nvfp4", "fp8", "per", "row", "fp8", "per", "128"]
    assert len(rows) == 4
    for row in rows:
        rates = [float(rate) for rate in row.split("]")[-1].split()[-4:]]
        assert len(rates) == 4 and all(rate > 0 for rate in rates), row


def test_a_load_leaves_torch_dynamo_unimported(full_precision):
    """The model is built on the meta device; PyTorch's meta versions of some ops import torch._dynamo, which
    cost every first load 1.3 s here. Nothing a load does may reach them."""
    probe = (
        "import sys, dgemma_runtime; dgemma_runtime.load(sys.argv[1], device='cpu'); "
        "print('torch._dynamo' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(full_precision)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
