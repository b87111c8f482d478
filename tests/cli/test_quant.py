"""Quantization through the executable: `--quant` while loading, quantized checkpoints as they are stored, and
what `show`, `run --verbose` and `bench` say about them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args

import pytest
from dgemma_runtime.quantization import QUANTIZE_AT_LOAD

from dgemma_cli.app import Precision
from tests.support.cli import FAST, PROMPT, assert_one_line_error, dgemma, facts, ok
from tests.support.quant_checkpoints import write_quantized

QUICK = (*FAST, "--steps", "4", "--seed", "1")


@pytest.fixture(scope="module")
def nvfp4_model(model, tmp_path_factory) -> Path:
    """The chat checkpoint as ModelOpt publishes NVFP4: experts, attention and dense MLP quantized."""
    return write_quantized(model, tmp_path_factory.mktemp("nvfp4") / "chat-nvfp4", "modelopt-nvfp4")


def weight_bytes(model: Path, env: dict[str, str], *flags: str) -> dict[str, int]:
    """What `dgemma bench` reports the loaded weights take, by storage format."""
    args = ("bench", str(model), "--runs", "1", "--max-new-tokens", "16", "--steps", "4", "--json")
    report = json.loads(ok(dgemma(env, *args, *flags)).stdout)
    assert report["quantization"] == "nvfp4 (quantized while loading)"
    return report["weight_bytes"]


def test_the_quant_choices_are_the_runtimes():
    assert get_args(Precision) == QUANTIZE_AT_LOAD


def test_run_quantizes_while_loading_and_verbose_says_so(model, shared_env):
    result = ok(dgemma(shared_env, "run", str(model), PROMPT, *QUICK, "--quant", "nvfp4", "--verbose"))
    assert result.stdout.strip(), "no answer"
    assert "quantization:         nvfp4 (quantized while loading)\n" in result.stderr
    assert re.search(r"^weights: .*\b[\d.]+ [KMG]B nvfp4\b", result.stderr, flags=re.MULTILINE), result.stderr


def test_a_quantized_checkpoint_runs_as_stored(nvfp4_model, shared_env):
    result = ok(dgemma(shared_env, "run", str(nvfp4_model), PROMPT, *QUICK, "--verbose"))
    assert result.stdout.strip(), "no answer"
    assert "quantization:         nvfp4 (modelopt NVFP4)\n" in result.stderr


def test_quant_dense_quantizes_attention_and_the_dense_mlp_too(model, shared_env):
    experts = weight_bytes(model, shared_env, "--quant", "nvfp4")
    everything = weight_bytes(model, shared_env, "--quant", "nvfp4", "--quant-dense")
    assert everything["nvfp4"] > experts["nvfp4"]
    assert everything["float32"] < experts["float32"]


@pytest.mark.parametrize(
    ("dialect", "stated"),
    [("modelopt-nvfp4", "nvfp4 (modelopt NVFP4)"), ("ct-fp8-channel", "fp8 (compressed-tensors float-quantized)")],
)
def test_show_states_a_quantized_checkpoints_precision(model, shared_env, tmp_path, dialect, stated):
    folder = write_quantized(model, tmp_path / dialect, dialect)
    shown = facts(ok(dgemma(shared_env, "show", str(folder))).stdout)
    assert shown["quantization"] == stated
    precision = stated.split()[0]
    assert re.search(rf"\b[\d.]+ [KMG]?B {precision}\b", shown["weights"]), shown["weights"]


def test_quant_on_a_quantized_checkpoint_is_one_line(nvfp4_model, env):
    message = assert_one_line_error(dgemma(env, "run", str(nvfp4_model), PROMPT, *QUICK, "--quant", "fp8"))
    assert "already modelopt NVFP4" in message
