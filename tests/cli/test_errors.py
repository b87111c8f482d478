"""Every failure a user can cause: one 'dgemma: error:' line on stderr, no traceback, the right exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.support.cli import FAST, PROMPT, assert_one_line_error, dgemma


def truncate_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def claim_llama(folder: Path) -> None:
    config = folder / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"model_type": "llama"}))


# (id, how to break the model folder, arguments after 'dgemma' with {model} for its path, exit code or None for
#  "non-zero", words the message must contain)
CASES = [
    ("unknown-model", None, ["run", "nosuch", PROMPT], 1,
     ["model 'nosuch' not found — see 'dgemma list', or 'dgemma pull nosuch'"]),
    ("bad-flag", None, ["run", "{model}", PROMPT, "--bogus"], 2, ["--bogus"]),
    ("zero-steps", None, ["run", "{model}", PROMPT, "--steps", "0"], 2, ["--steps"]),
    ("t-min-above-t-max", None, ["run", "{model}", PROMPT, *FAST, "--t-min", "2", "--t-max", "1"], None, ["t_min"]),
    ("truncated-weights", truncate_weights, ["run", "{model}", PROMPT, *FAST], None, ["model.safetensors"]),
    ("not-diffusion-gemma", claim_llama, ["run", "{model}", PROMPT, *FAST], None, ["'llama'"]),
    ("no-prompt", None, ["run", "{model}"], None, ["no prompt"]),
    ("unknown-quant", None, ["run", "{model}", PROMPT, "--quant", "int3"], 2, ["--quant", "'int3'", "nvfp4"]),
    ("quant-dense-alone", None, ["run", "{model}", PROMPT, "--quant-dense"], 2, ["--quant-dense needs --quant"]),
    ("cuda-graphs-on-cpu", None, ["run", "{model}", PROMPT, "--device", "cpu", "--cuda-graphs"], 2, ["CUDA graphs"]),
    ("rm-path-escape", None, ["rm", "../x"], None, ["invalid model name '../x'"]),
    ("rm-bad-name", None, ["rm", "A:b/c"], None, ["invalid model name 'A:b/c'"]),
    ("rm-builtin", None, ["rm", "dgemma-tiny"], None, ["built into dgemma"]),
    ("missing-folder", None, ["run", "./no-such-folder", PROMPT], 1,
     ["model './no-such-folder' not found — no such folder: /", "/no-such-folder"]),
    ("rm-unknown", None, ["rm", "nosuch"], 1, ["model 'nosuch' not found — see 'dgemma list'"]),
]  # fmt: skip


@pytest.mark.parametrize(("breakage", "args", "exit_code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_mistake_is_one_line_and_an_exit_code(env, model, model_copy, breakage, args, exit_code, words):
    folder = model
    if breakage is not None:
        breakage(model_copy)
        folder = model_copy
    message = assert_one_line_error(dgemma(env, *(arg.format(model=folder) for arg in args)), exit_code)
    for word in words:
        assert word in message
    if args[0] == "rm" or args[1].startswith("./"):
        assert "pull" not in message  # no hint that cannot work


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu(env, model):
    message = assert_one_line_error(dgemma(env, "run", str(model), PROMPT, *FAST, "--device", "cuda"))
    assert "cuda" in message.lower()
