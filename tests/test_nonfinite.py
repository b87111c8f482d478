"""No silent wrong answers: NaN or infinite logits fail the generation with one error (checked on the device and
read once per canvas), and a t_max whose float32 temperature overflows is refused as an option."""

from __future__ import annotations

import shutil
from pathlib import Path

import dgemma_runtime
import pytest
import torch
from dgemma_runtime import DgemmaError, OptionError
from dgemma_runtime.errors import NonFiniteError
from safetensors.torch import load_file, save_file

from tests.support.checkpoints import write_chat_checkpoint
from tests.support.cli import DGEMMA, PROMPT, assert_one_line_error, dgemma, dgemma_env, ok

PROMPT_IDS = [2, 105, 236, 107, 697, 786, 106]
NAN_MESSAGE = "the model computed NaN or infinite logits (canvas 1): corrupt weights, or activations that overflow"
needs_cli = pytest.mark.skipif(DGEMMA is None, reason="no 'dgemma' executable: run 'pip install -e .' first")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_chat_checkpoint(tmp_path_factory.mktemp("chat-model"))


@pytest.fixture(scope="module")
def nan_model(model, tmp_path_factory) -> Path:
    """The same model with one NaN in its final norm: every logit becomes NaN."""
    folder = Path(shutil.copytree(model, tmp_path_factory.mktemp("nan") / "model"))
    tensors = load_file(folder / "model.safetensors")
    tensors["model.decoder.norm.weight"][3] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def engine(model) -> dgemma_runtime.Engine:
    return dgemma_runtime.load(model, device="cpu", dtype="float32")


def test_nan_weights_fail_the_generation_before_any_canvas(nan_model):
    engine = dgemma_runtime.load(nan_model, device="cpu", dtype="float32")
    events = engine.stream(PROMPT_IDS, seed=0, max_new_tokens=32)
    steps = []
    with pytest.raises(NonFiniteError) as info:
        for event in events:
            assert isinstance(event, dgemma_runtime.StepEvent), "a canvas of NaN's argmax was handed out"
            steps.append(event)
    assert str(info.value).startswith(NAN_MESSAGE) and "\n" not in str(info.value)
    assert len(steps) == engine.defaults.max_denoising_steps  # NaN never converges: found at the canvas's end
    assert isinstance(info.value, DgemmaError) and not isinstance(info.value, OptionError)  # a 500, not a 400


def test_finite_weights_are_unaffected(engine):
    first = engine.generate(PROMPT_IDS, seed=0, max_new_tokens=32)
    again = engine.generate(PROMPT_IDS, seed=0, max_new_tokens=32)
    assert first.token_ids == again.token_ids and first.stats.canvases >= 1


def test_a_temperature_that_overflows_float32_is_an_option_error(engine):
    with pytest.raises(OptionError, match=r"^t_max 1e\+308 is too large: the sampler's float32 temperature overflows"):
        engine.generate(PROMPT_IDS, seed=0, max_new_tokens=16, t_max=1e308)
    engine.generate(PROMPT_IDS, seed=0, max_new_tokens=16, t_max=1e30)  # finite in float32: allowed


def test_a_temperature_too_small_for_float32_gives_non_finite_logits(engine):
    with pytest.raises(NonFiniteError):
        engine.generate(PROMPT_IDS, seed=0, max_new_tokens=16, t_min=1e-45, t_max=1e-40)


@needs_cli
def test_run_with_nan_weights_is_one_line_and_exit_1(nan_model, tmp_path):
    result = dgemma(dgemma_env(tmp_path), "run", str(nan_model), PROMPT, "--max-new-tokens", "16")
    assert assert_one_line_error(result, exit_code=1).startswith(NAN_MESSAGE)


@needs_cli
def test_run_with_t_max_1e308_is_one_line_and_exit_2(model, tmp_path):
    env = dgemma_env(tmp_path)
    result = dgemma(env, "run", str(model), PROMPT, "--max-new-tokens", "16", "--t-max", "1e308")
    assert assert_one_line_error(result, exit_code=2).startswith("t_max 1e+308 is too large")
    assert ok(dgemma(env, "run", str(model), PROMPT, "--max-new-tokens", "16", "--seed", "0")).stdout.strip()


def test_the_flag_is_read_once_per_canvas(engine, monkeypatch):
    """The check adds no host sync to a step: one `.item()` per canvas, whatever the number of steps."""
    reads = []
    original = torch.Tensor.item

    def counted(tensor: torch.Tensor):
        reads.append(tensor.dtype)
        return original(tensor)

    monkeypatch.setattr(torch.Tensor, "item", counted)
    result = engine.generate(PROMPT_IDS, seed=0, max_new_tokens=32, stability_threshold=0, confidence_threshold=0)
    assert sum(result.stats.steps_per_canvas) > result.stats.canvases  # several steps per canvas
    assert reads.count(torch.bool) == result.stats.canvases
