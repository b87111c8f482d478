"""Loading progress from the `dgemma` executable: a bar on a terminal (the one-shot run, the chat and its /load),
gone once the model is ready, nothing when stderr is piped; Ctrl-C mid-load ends with one line and exit 130; and
`--verbose` and `bench` report the load's seconds and GB/s."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.support.cli import FAST, PROMPT, Screen, dgemma, ok, plain
from tests.support.scripts import script
from tests.support.terminal import PROMPT_MARK

pexpect = pytest.importorskip("pexpect")

BAR = re.compile(r"reading +\S+ +[\d.]+/[\d.]+ [kMG]?B +\d+/(\d+) tensors")


def test_a_terminal_shows_the_load_and_keeps_only_the_answer(model, spawn):
    terminal = spawn("run", str(model), PROMPT, *FAST, "--seed", "1")
    assert terminal.wait() == 0
    drawn = plain(terminal.transcript)
    bars = BAR.findall(drawn)
    assert bars, drawn[:2000]
    assert "reading" in drawn[: drawn.index("canvas 1 · step")], "the bar comes before the answer"
    final = Screen().feed(terminal.transcript).text
    assert "reading" not in final and "tensors" not in final, final  # the bar went once the model was in


def test_piped_stderr_gets_no_progress(model, shared_env):
    result = ok(dgemma(shared_env, "run", str(model), PROMPT, *FAST, "--seed", "1"))
    assert result.stderr == ""


def test_the_chat_shows_the_first_load_and_each_load_command(model, spawn):
    terminal = spawn("run", str(model), "--max-new-tokens", "16")
    terminal.expect(PROMPT_MARK)
    first = terminal.transcript
    assert BAR.search(plain(first)), plain(first)[:2000]
    terminal.child.sendline(f"/load {model}")
    terminal.expect(re.escape(f"Loading model '{model}'"))
    terminal.expect(PROMPT_MARK)
    assert BAR.search(plain(terminal.transcript[len(first) :]))
    terminal.child.sendline("/bye")
    assert terminal.wait() == 0
    screen = Screen().feed(terminal.transcript).text
    assert screen.startswith(PROMPT_MARK) and "tensors" not in screen, screen  # the bars went, the prompt stayed


@pytest.fixture(scope="module")
def slow_to_load(tmp_path_factory) -> Path:
    """~200 MB of bf16 experts: quantizing them to NVFP4 at load takes seconds on the CPU, time to press Ctrl-C."""
    bench_load = script("bench_load")
    text = bench_load.TINY | {
        "hidden_size": 512,
        "intermediate_size": 256,
        "moe_intermediate_size": 256,
        "num_experts": 64,
        "num_hidden_layers": 4,
        "layer_types": ["sliding_attention"] * 3 + ["full_attention"],
    }
    tensors = bench_load.bf16_tensors(text, torch.Generator().manual_seed(0))
    return bench_load.write_checkpoint(tmp_path_factory.mktemp("slow") / "ckpt", text, tensors, None)


def test_ctrl_c_while_loading_ends_with_one_line_and_exit_130(slow_to_load, spawn):
    terminal = spawn("run", str(slow_to_load), PROMPT, "--quant", "nvfp4", "--device", "cpu")
    terminal.expect(r"quantizing")
    terminal.child.sendintr()
    assert terminal.wait() == 130
    raw = terminal.transcript
    assert "Traceback" not in raw and "KeyboardInterrupt" not in raw
    lines = [line for line in Screen().feed(raw).text.splitlines() if line.strip() not in ("", "^C")]
    assert lines == [f"dgemma: interrupted while loading '{slow_to_load}'"], lines
    assert raw.rindex("\x1b[?25h") > raw.rindex("\x1b[?25l")  # the cursor is back


def test_verbose_and_bench_report_the_load_rate(model, shared_env):
    result = ok(dgemma(shared_env, "run", str(model), PROMPT, *FAST, "--seed", "1", "--verbose"))
    assert re.search(r"^load rate: +\d+\.\d\d GB/s \([\d.]+ [kMG]?B in \d+\.\d\d s\)$", result.stderr, re.MULTILINE)
    report = json.loads(ok(dgemma(shared_env, "bench", str(model), "--runs", "1", *FAST, "--json")).stdout)
    assert report["load_seconds"] > 0 and report["load_bytes"] > 0
    assert report["load_bytes_per_second"] == pytest.approx(report["load_bytes"] / report["load_seconds"])
    shown = ok(dgemma(shared_env, "bench", str(model), "--runs", "1", *FAST)).stdout
    assert re.search(r"^load: \d+\.\d\d GB/s", shown, re.MULTILINE), shown
