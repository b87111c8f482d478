"""Checkpoint layout and validation: the released 26B names and shapes, and one clear error per bad folder."""

from __future__ import annotations

import json
import shutil

import dgemma_runtime
import pytest
import torch
from dgemma_runtime.config import RELEASED_TEXT_CONFIG, parse_config
from dgemma_runtime.errors import CheckpointError, UnsupportedModelError
from dgemma_runtime.weights import SKIPPED_PREFIXES, expected_shapes
from safetensors.torch import load_file, save_file

from tests.support.checkpoints import TINY_VISION, TinySpec, write_checkpoint
from tests.support.quant_checkpoints import relayout

RELEASED_TEXT = RELEASED_TEXT_CONFIG


def test_released_26b_layout_matches_what_transformers_saves():
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    hf_config = DiffusionGemmaConfig(text_config=RELEASED_TEXT, canvas_length=256, vision_config=TINY_VISION)
    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(hf_config)
    tied = set(model.all_tied_weights_keys)
    saved = {
        name: tuple(t.shape)
        for name, t in model.state_dict().items()
        if name not in tied and not name.startswith(SKIPPED_PREFIXES)
    }
    ours = expected_shapes(
        parse_config({"model_type": "diffusion_gemma", "canvas_length": 256, "text_config": RELEASED_TEXT})
    )
    assert len(saved) == 691
    assert ours == saved


def test_per_layer_geometry_of_the_released_config():
    config = parse_config({"model_type": "diffusion_gemma", "text_config": RELEASED_TEXT})
    full = [i for i, spec in enumerate(config.layers) if not spec.is_sliding]
    assert full == [5, 11, 17, 23, 29]
    assert {(s.head_dim, s.num_kv_heads, s.has_v_proj) for s in config.layers if s.is_sliding} == {(256, 8, True)}
    assert {(s.head_dim, s.num_kv_heads, s.has_v_proj) for s in config.layers if not s.is_sliding} == {(512, 2, False)}
    assert config.layers[5].rope.partial_rotary_factor == 0.25 and config.layers[0].rope.theta == 10000.0


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(TinySpec(), tmp_path / "ckpt")


def test_missing_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        dgemma_runtime.load(tmp_path / "empty", device="cpu")


def test_wrong_architecture_names_what_it_found(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    config["model_type"] = "llama"
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="'llama'"):
        dgemma_runtime.load(checkpoint, device="cpu")


def test_truncated_safetensors(checkpoint):
    path = checkpoint / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        dgemma_runtime.load(checkpoint, device="cpu")


def test_missing_and_misshaped_tensors_in_one_error(checkpoint):
    path = checkpoint / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.decoder.layers.0.self_attn.v_proj.weight"]
    tensors["model.decoder.norm.weight"] = torch.ones(7)
    tensors["model.decoder.surprise.weight"] = torch.ones(2)
    save_file(tensors, path)
    with pytest.raises(CheckpointError) as info:
        dgemma_runtime.load(checkpoint, device="cpu")
    message = str(info.value)
    assert "1 missing: model.decoder.layers.0.self_attn.v_proj.weight" in message
    assert "1 unexpected: model.decoder.surprise.weight" in message
    assert "model.decoder.norm.weight [7] (expected [64])" in message


def test_encoder_names_are_reported_as_stored(checkpoint):
    path = checkpoint / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.encoder.language_model.layers.1.layer_scalar"]  # the encoder's own, not the decoder's
    tensors["model.encoder.language_model.surprise.weight"] = torch.ones(2)
    save_file(tensors, path)
    with pytest.raises(CheckpointError) as info:
        dgemma_runtime.load(checkpoint, device="cpu")
    message = str(info.value)
    assert "1 missing: model.encoder.language_model.layers.1.layer_scalar" in message
    assert "1 unexpected: model.encoder.language_model.surprise.weight" in message


@pytest.mark.parametrize("layout", ["both", "encoder"])
def test_shared_weights_under_the_encoder_prefix_load_the_same_model(tmp_path, checkpoint, layout):
    """Shared text weights stored twice, or only under `model.encoder.language_model.*`."""
    other = relayout(shutil.copytree(checkpoint, tmp_path / layout), layout)
    assert any(n.startswith("model.encoder.language_model.norm") for n in load_file(other / "model.safetensors"))
    ours = dgemma_runtime.load(other, device="cpu").model.state_dict()
    reference = dgemma_runtime.load(checkpoint, device="cpu").model.state_dict()
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[name], reference[name]) for name in reference)
    assert not torch.equal(ours["layers.0.layer_scalar"], ours["layers.0.encoder_scalar"])  # each stack's own


def test_pickled_weights_are_refused(checkpoint):
    (checkpoint / "model.safetensors").rename(checkpoint / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors only"):
        dgemma_runtime.load(checkpoint, device="cpu")


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path, checkpoint):
    tensors = load_file(checkpoint / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for file in ("config.json", "generation_config.json"):
        (sharded / file).write_text((checkpoint / file).read_text())
    for file, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, sharded / file)
    index = {"weight_map": {n: f for f, shard_names in shards.items() for n in shard_names}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))

    prompt = [5, 6, 7, 8]
    single = dgemma_runtime.load(checkpoint, device="cpu").generate(prompt, seed=1, max_new_tokens=16)
    split = dgemma_runtime.load(sharded, device="cpu").generate(prompt, seed=1, max_new_tokens=16)
    assert single.token_ids == split.token_ids


def test_loads_in_bfloat16(checkpoint):
    engine = dgemma_runtime.load(checkpoint, device="cpu", dtype="bfloat16")
    assert engine.model.embed_tokens.weight.dtype == torch.bfloat16
    assert len(engine.generate([5, 6, 7], seed=0, max_new_tokens=16).token_ids) == 16
