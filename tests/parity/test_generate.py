"""Generated ids identical to transformers 5.23 `generate()` under the same seed, across the axes the engine
varies on. Each case writes a tiny random checkpoint and runs both implementations on it."""

from __future__ import annotations

import dgemma_runtime
import pytest
import torch

from tests.support.checkpoints import TinySpec, load_reference, write_checkpoint

PROMPT_LEN = 12
# A random model is never confident at the released thresholds; these make stable-and-confident fire at
# different steps in different canvases and rows.
CONFIDENT = {
    "confidence_threshold": 0.5,
    "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 2.0},
}


def prompt(batch: int = 1, length: int = PROMPT_LEN, vocab: int = 500, seed: int = 1234) -> torch.Tensor:
    return torch.randint(5, vocab - 20, (batch, length), generator=torch.Generator().manual_seed(seed))


def reference_rows(folder, ids: torch.Tensor, seed: int, **kwargs) -> tuple[list[list[int]], object]:
    """transformers' generated ids per row, cut after the first EOS as our API returns them."""
    model = load_reference(folder)
    torch.manual_seed(seed)
    out = model.generate(ids, **kwargs)
    eos = set(
        model.generation_config.eos_token_id
        if isinstance(model.generation_config.eos_token_id, list)
        else [model.generation_config.eos_token_id or 1]
    )
    rows = []
    for row in out.sequences[:, ids.shape[1] :].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows, out


def assert_same_generation(tmp_path, spec: TinySpec, ids: torch.Tensor, seed: int = 42, **kwargs):
    folder = write_checkpoint(spec, tmp_path / "ckpt")
    expected, reference = reference_rows(folder, ids, seed, **kwargs)
    engine = dgemma_runtime.load(folder, device="cpu", dtype="float32")
    result = engine.generate(ids.tolist(), seed=seed, **kwargs)
    assert result.rows == expected
    return result, reference


def test_two_canvases_prompt_longer_than_window(tmp_path):
    result, _ = assert_same_generation(tmp_path, TinySpec(), prompt(), max_new_tokens=32)
    assert result.stats.canvases == 2 and result.stats.decoder_forwards == 96


@pytest.mark.parametrize(
    "layer_types",
    [
        ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
        ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
    ],
)
def test_layer_patterns(tmp_path, layer_types):
    spec = TinySpec(text={"num_hidden_layers": len(layer_types), "layer_types": layer_types}, seed=3)
    assert_same_generation(tmp_path, spec, prompt(length=5), max_new_tokens=48)


def test_window_longer_than_everything(tmp_path):
    spec = TinySpec(text={"sliding_window": 512}, seed=5)
    assert_same_generation(tmp_path, spec, prompt(length=7), max_new_tokens=16)


def test_non_default_sampler_settings(tmp_path):
    spec = TinySpec(
        generation={
            "max_denoising_steps": 9,
            "t_min": 0.3,
            "t_max": 1.1,
            "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.7},
            "stability_threshold": 2,
            "confidence_threshold": 0.05,
        },
        embed_scale=40.0,
        seed=7,
    )
    result, _ = assert_same_generation(tmp_path, spec, prompt(), max_new_tokens=32)
    assert all(steps <= 9 for steps in result.stats.steps_per_canvas)


def test_call_arguments_override_the_checkpoint(tmp_path):
    result, _ = assert_same_generation(
        tmp_path, TinySpec(seed=11), prompt(), max_new_tokens=16, max_denoising_steps=5, t_min=0.5, t_max=0.9
    )
    assert result.stats.steps_per_canvas == (5,)


def test_early_stopping_with_a_confident_model(tmp_path):
    spec = TinySpec(embed_scale=40.0, seed=2, generation=CONFIDENT)
    result, reference = assert_same_generation(tmp_path, spec, prompt(), max_new_tokens=48)
    assert max(result.stats.steps_per_canvas) < 48  # stable-and-confident fired
    # The reference counts every new position (its tiny config has no pad id): recover its forward count.
    new_positions = reference.sequences.shape[1] - PROMPT_LEN
    assert result.stats.decoder_forwards == round(new_positions / reference.tokens_per_forward[0].item())


def test_batch_of_two_rows_stopping_at_different_steps(tmp_path):
    spec = TinySpec(embed_scale=40.0, seed=2, generation=CONFIDENT)
    result, _ = assert_same_generation(tmp_path, spec, prompt(batch=2), max_new_tokens=48)
    assert len(result.rows) == 2
    assert result.stats.decoder_forwards < 2 * sum(result.stats.steps_per_canvas)  # rows froze at different steps


def test_eos_inside_a_canvas(tmp_path):
    # Pick an EOS id that this model writes mid-canvas: the first run tells us which ids appear where.
    spec = TinySpec(embed_scale=40.0, seed=2, generation=dict(CONFIDENT))
    folder = write_checkpoint(spec, tmp_path / "probe")
    probe = dgemma_runtime.load(folder, device="cpu", dtype="float32").generate(
        prompt(batch=2).tolist(), seed=42, max_new_tokens=48
    )
    eos_id = probe.rows[0][20]  # inside the second canvas of row 0
    spec.generation["eos_token_id"] = [eos_id, 1]
    result, _ = assert_same_generation(tmp_path, spec, prompt(batch=2), max_new_tokens=48)
    assert result.rows[0][-1] == eos_id and len(result.rows[0]) <= 21
    assert result.stats.finish_reason in ("stop", "length")


def test_left_padded_batch_of_unequal_prompts(tmp_path):
    """Prompts of different lengths share a batch: left padding, hidden by the attention mask."""
    spec = TinySpec(embed_scale=40.0, seed=2, generation=CONFIDENT)
    folder = write_checkpoint(spec, tmp_path / "ckpt")
    long, short = prompt(length=12)[0].tolist(), prompt(length=5, seed=99)[0].tolist()
    padded = torch.tensor([long, [0] * 7 + short])
    mask = torch.tensor([[1] * 12, [0] * 7 + [1] * 5])
    expected, _ = reference_rows(folder, padded, 42, attention_mask=mask, max_new_tokens=32)
    result = dgemma_runtime.load(folder, device="cpu", dtype="float32").generate(
        [long, short], seed=42, max_new_tokens=32
    )
    assert result.rows == expected
    assert result.stats.prompt_tokens == 17
