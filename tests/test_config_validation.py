"""A broken model folder is one line naming the file and the field, never a traceback: config.json and
generation_config.json are validated field by field before anything is built from them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dgemma_runtime import CheckpointError, UnsupportedModelError, load_config

from tests.support.checkpoints import write_chat_checkpoint
from tests.support.cli import DGEMMA, PROMPT, assert_one_line_error, dgemma, dgemma_env

Edit = Callable[[dict[str, Any]], None]


def text(**fields: Any) -> Edit:
    return lambda config: config["text_config"].update(fields)


def top(**fields: Any) -> Edit:
    return lambda config: config.update(fields)


def rope(kind: str, **fields: Any) -> Edit:
    return lambda config: config["text_config"]["rope_parameters"][kind].update(fields)


# (file, edit, the error's start): each names the file and the field.
CASES: dict[str, tuple[str, Edit, str]] = {
    "canvas_length 0": ("config.json", top(canvas_length=0), "config.json: canvas_length must be at least 1, not 0"),
    "canvas_length text": ("config.json", top(canvas_length="16"), "config.json: canvas_length must be a whole num"),
    "text_config a list": ("config.json", top(text_config=[1, 2]), "config.json: text_config must be a JSON object"),
    "rope_parameters a string": (
        "config.json",
        text(rope_parameters="yarn"),
        'config.json: text_config.rope_parameters must be a JSON object, not "yarn"',
    ),
    "rope_parameters without a layer type": (
        "config.json",
        text(rope_parameters={"sliding_attention": {"rope_theta": 1e4}}),
        "config.json: text_config.rope_parameters.full_attention is missing",
    ),
    "rope_theta text": (
        "config.json",
        rope("sliding_attention", rope_theta="ten thousand"),
        "config.json: text_config.rope_parameters.sliding_attention.rope_theta must be a finite number",
    ),
    "partial_rotary_factor 2": (
        "config.json",
        rope("full_attention", partial_rotary_factor=2),
        "config.json: text_config.rope_parameters.full_attention.partial_rotary_factor must be at most 1",
    ),
    "num_hidden_layers 0": (
        "config.json",
        text(num_hidden_layers=0),
        "config.json: text_config.num_hidden_layers must be at least 1",
    ),
    "layer_types a string": ("config.json", text(layer_types="full"), "config.json: text_config.layer_types must be"),
    "top_k above the experts": (
        "config.json",
        text(top_k_experts=9),
        "config.json: text_config.top_k_experts must be at most num_experts (4), not 9",
    ),
    "softcapping 0": (
        "config.json",
        text(final_logit_softcapping=0),
        "config.json: text_config.final_logit_softcapping must be greater than 0",
    ),
    "t_min text": ("generation_config.json", top(t_min="low"), "generation_config.json: t_min must be a finite number"),
    "t_max negative": ("generation_config.json", top(t_max=-1.0), "generation_config.json: t_max must be greater than"),
    "t_min above t_max": ("generation_config.json", top(t_min=0.9, t_max=0.5), "generation_config.json: t_min must be"),
    "eos_token_id text": (
        "generation_config.json",
        top(eos_token_id="</s>"),
        'generation_config.json: eos_token_id must be a token id or a list of them, not "</s>"',
    ),
    "eos_token_id a list with text": (
        "generation_config.json",
        top(eos_token_id=[1, "x"]),
        "generation_config.json: eos_token_id must be a token id",
    ),
    "sampler_config a list": (
        "generation_config.json",
        top(sampler_config=[0.1]),
        "generation_config.json: sampler_config must be a JSON object",
    ),
    "pad_token_id past the vocabulary": (
        "generation_config.json",
        top(pad_token_id=99999),
        "generation_config.json: pad_token_id must be below the vocabulary size (2688)",
    ),
}
# The cases, also through the executable.
CLI_CASES = ("canvas_length 0", "text_config a list", "rope_parameters a string", "t_min text", "eos_token_id text")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_chat_checkpoint(tmp_path_factory.mktemp("chat-model"))


def broken(model: Path, folder: Path, case: str) -> Path:
    file, edit, _ = CASES[case]
    shutil.copytree(model, folder)
    config = json.loads((folder / file).read_text())
    edit(config)
    (folder / file).write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("case", CASES)
def test_each_malformed_field_is_one_line_naming_it(model, tmp_path, case):
    folder = broken(model, tmp_path / "model", case)
    with pytest.raises((CheckpointError, UnsupportedModelError)) as info:
        load_config(folder)
    message = str(info.value)
    assert "\n" not in message and message.startswith(CASES[case][2]), message


def test_the_intact_folder_still_loads(model):
    config, defaults = load_config(model)
    assert (config.canvas_length, config.num_layers, defaults.eos_token_ids) == (16, 2, (1, 106, 50))
    assert config.final_logit_softcapping == 30.0 and config.layers[1].rope.partial_rotary_factor == 0.25


@pytest.mark.skipif(DGEMMA is None, reason="no 'dgemma' executable: run 'pip install -e .' first")
@pytest.mark.parametrize("command", ["show", "run"])
@pytest.mark.parametrize("case", CLI_CASES)
def test_show_and_run_say_one_line_and_fail(model, tmp_path, case, command):
    folder = broken(model, tmp_path / "model", case)
    args = ("show", str(folder)) if command == "show" else ("run", str(folder), PROMPT, "--max-new-tokens", "16")
    message = assert_one_line_error(dgemma(dgemma_env(tmp_path), *args), exit_code=1)
    assert message.startswith(CASES[case][2]), message
