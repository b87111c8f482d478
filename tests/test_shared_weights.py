"""The encoder and decoder share their text weights, and checkpoints store them under either prefix or both.

compressed-tensors' compressor, saved by transformers' `save_pretrained` (what llm-compressor does), writes every
quantized tensor under `model.decoder.*` and again under `model.encoder.language_model.*`. One copy is read; the
other must be the same bytes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dgemma_runtime
import pytest
import torch
from dgemma_kernels import Fp8Weight, Nvfp4Weight
from dgemma_runtime import CheckpointError, inspect
from dgemma_runtime.cache import KVCache
from dgemma_runtime.config import parse_config, read_json
from dgemma_runtime.weights import SAMPLE_BYTES, load_state, plan_load, read_header, shard_files, validate
from safetensors.torch import load_file, save_file

from tests.support.checkpoints import TinySpec, write_checkpoint
from tests.support.quant_checkpoints import DECODER, ENCODER_TEXT, relayout, write_compressed

pytest.importorskip("compressed_tensors")

SPEC = TinySpec(text={"hidden_size": 160, "intermediate_size": 144, "moe_intermediate_size": 48}, seed=3)
PRECISIONS = ("nvfp4", "fp8")
LAYOUTS = ("saved", "both", "encoder")  # as save_pretrained wrote it; plain shared tensors twice too; encoder only
# A quantized tensor of each precision, small enough that the default check compares all of it.
QUANTIZED = {"nvfp4": "layers.1.experts.2.down_proj.weight_packed", "fp8": "layers.1.experts.2.down_proj.weight"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Per precision, the folder `save_pretrained` wrote (never modified: tests edit copies)."""
    source = write_checkpoint(SPEC, tmp_path_factory.mktemp("bf16") / "ckpt")
    return {p: write_compressed(source, tmp_path_factory.mktemp(p) / "saved", p) for p in PRECISIONS}


def copy_as(folder: Path, dst: Path, layout: str) -> Path:
    shutil.copytree(folder, dst)
    return dst if layout == "saved" else relayout(dst, layout)


def names(folder: Path) -> set[str]:
    return set(load_file(folder / "model.safetensors"))


def logits(folder: Path) -> torch.Tensor:
    engine = dgemma_runtime.load(folder, device="cpu", dtype="float32")
    prompt = torch.arange(3, 40).unsqueeze(0)
    canvas = torch.randint(0, engine.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2))
    cache = KVCache(engine.config, 1, prompt.shape[1], engine.device, engine.dtype)
    with torch.no_grad():
        engine.model.encode(prompt, cache)
        return engine.model.decode(canvas, cache, None)


def load_verified(folder: Path, verify: bool) -> None:
    info = inspect(folder)
    load_state(info.tensors, info.plan, torch.device("cpu"), torch.float32, info.scheme, verify=verify)


def flip_byte(folder: Path, name: str, at: int) -> None:
    """Change one byte of a tensor in place, `at` bytes into its data."""
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[:8], "little")
    start = 8 + size + json.loads(data[8 : 8 + size])[name]["data_offsets"][0]
    data[start + at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_save_pretrained_writes_every_quantized_tensor_under_both_prefixes(saved, precision):
    """The premise, checked on the fixture: quantized tensors twice, tied full-precision tensors once."""
    stored = names(saved[precision])
    suffixes = {"nvfp4": ("weight_packed", "weight_scale", "weight_global_scale"), "fp8": ("weight", "weight_scale")}
    quantized = {n.removeprefix(DECODER) for n in stored if n.startswith(DECODER) and n.endswith(suffixes[precision])}
    quantized = {n for n in quantized if "_proj." in n and "self_conditioning" not in n}
    layers = len(SPEC.config_dict()["text_config"]["layer_types"])
    assert len(quantized) == len(suffixes[precision]) * (layers * 3 * 4 + layers * 3 + 4 + 3)  # experts, MLP, attn
    encoder = {n.removeprefix(ENCODER_TEXT) for n in stored if n.startswith(ENCODER_TEXT)}
    assert encoder == quantized | {f"layers.{i}.layer_scalar" for i in range(layers)}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_layout_loads_to_the_logits_of_one_copy(saved, tmp_path, precision):
    single = copy_as(saved[precision], tmp_path / "decoder", "decoder")
    assert not {n for n in names(single) if n.startswith(ENCODER_TEXT) and not n.endswith("layer_scalar")}
    reference = logits(single)
    for layout in LAYOUTS:
        folder = copy_as(saved[precision], tmp_path / layout, layout)
        assert torch.equal(logits(folder), reference), layout
    model = dgemma_runtime.load(folder, device="cpu").model
    assert isinstance(model.layers[0].experts.down_proj, Nvfp4Weight if precision == "nvfp4" else Fp8Weight)


def test_encoder_only_layout_holds_no_decoder_copy_but_self_conditioning_and_scalars(saved, tmp_path):
    folder = copy_as(saved["nvfp4"], tmp_path / "encoder", "encoder")
    decoder = {n for n in names(folder) if n.startswith(DECODER)}
    assert decoder and all("self_conditioning." in n or n.endswith(".layer_scalar") for n in decoder)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_header_readers_count_each_shared_tensor_once(saved, tmp_path, precision):
    """`pull` and the memory estimates call read_header, plan_load(...).expected and validate."""
    config = parse_config(read_json(saved[precision] / "config.json"))
    seen = []
    for layout in ("decoder", *LAYOUTS):
        found = read_header(shard_files(copy_as(saved[precision], tmp_path / layout, layout)))
        expected = plan_load(found, config).expected
        validate(found, expected)
        seen.append((sorted(expected), sum(found[n].nbytes for n in expected)))
    assert all(s == seen[0] for s in seen)


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_copy_one_byte_apart_is_refused_naming_it(saved, tmp_path, precision, verify):
    folder = copy_as(saved[precision], tmp_path / "q", "saved")
    name = ENCODER_TEXT + QUANTIZED[precision]
    flip_byte(folder, name, at=100)
    with pytest.raises(CheckpointError) as info:
        load_verified(folder, verify)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{name}: bytes differ from {DECODER}{QUANTIZED[precision]}")


def test_a_copy_of_another_dtype_is_refused_from_the_headers(saved, tmp_path):
    folder = copy_as(saved["nvfp4"], tmp_path / "q", "saved")
    name = f"{ENCODER_TEXT}layers.0.self_attn.q_proj.weight_global_scale"
    tensors = load_file(folder / "model.safetensors")
    tensors[name] = tensors[name].double()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"^{name} \[1\] F64 differs from {DECODER}.*q_proj.weight_global_scale"):
        dgemma_runtime.load(folder, device="cpu")


def test_the_default_check_samples_and_verify_reads_every_byte(saved, tmp_path):
    """The encoder's copy of the embedding (320 KB) differs just past the first sampled span."""
    folder = copy_as(saved["nvfp4"], tmp_path / "q", "both")
    name = f"{ENCODER_TEXT}embed_tokens.weight"
    flip_byte(folder, name, at=SAMPLE_BYTES + 8)
    load_verified(folder, verify=False)
    with pytest.raises(CheckpointError, match=rf"^{name}: bytes differ from {DECODER}embed_tokens\.weight"):
        load_verified(folder, verify=True)
    flip_byte(folder, name, at=0)  # inside the first sampled span
    with pytest.raises(CheckpointError, match=rf"^{name}: bytes differ"):
        load_verified(folder, verify=False)
