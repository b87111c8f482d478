"""Quantized checkpoints in every supported on-disk dialect load, and compute close to the full-precision model.

Model-level comparisons use single-forward logits on a fixed cache and canvas, never denoising trajectories:
diffusion trajectories amplify any logit drift (quant-formats notes §6.4).
"""

from __future__ import annotations

import json
from pathlib import Path

import dgemma_runtime
import pytest
import torch
from dgemma_kernels import Fp8Weight, Nvfp4Weight
from dgemma_runtime import CheckpointError, Message, OptionError, UnsupportedModelError
from dgemma_runtime.cache import KVCache
from safetensors.torch import load_file, save_file

from tests.support.checkpoints import TinySpec, write_checkpoint
from tests.support.quant_checkpoints import DIALECTS, write_quantized

# hidden 160 and dense width 144: neither is a multiple of 128, so FP8 blocks are partial along N and K.
SPEC = TinySpec(text={"hidden_size": 160, "intermediate_size": 144, "moe_intermediate_size": 48}, seed=3)
TINY = Path(__file__).resolve().parent.parent / "dgemma_cli" / "builtin" / "dgemma-tiny"
# Per-matrix round-to-nearest error on these weights: FP8 ≈ 2-3 %, NVFP4 ≈ 9-10 % (quant-formats notes §6.4).
MAX_WEIGHT_ERROR = {"fp8": 0.04, "nvfp4": 0.12}
# Logits of the trained dgemma-tiny (a random model's logits are too flat to mean anything: bf16 alone moves them
# to cosine 0.95). Measured: FP8 >= 0.99997 and top-1 agreement >= 0.95 in every dialect; NVFP4 0.99958 and 0.89
# with attention and dense MLP quantized too (0.99994 / 0.95 experts only).
MIN_COSINE = {"fp8": 0.99, "nvfp4": 0.995}
MIN_TOP1 = {"fp8": 0.9, "nvfp4": 0.8}


@pytest.fixture(scope="module")
def full_precision(tmp_path_factory):
    return write_checkpoint(SPEC, tmp_path_factory.mktemp("bf16") / "ckpt")


def precision_of(dialect: str) -> str:
    return "nvfp4" if "nvfp4" in dialect else "fp8"


def relative_error(weight, reference: torch.Tensor) -> float:
    return ((weight.dequantize(torch.float32) - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_each_dialect_loads_every_weight_in_its_format(full_precision, tmp_path, dialect):
    folder = write_quantized(full_precision, tmp_path / dialect, dialect, dense=True)
    quantized = dgemma_runtime.load(folder, device="cpu", dtype="float32").model
    reference = dgemma_runtime.load(full_precision, device="cpu", dtype="float32").model
    expected_type = Nvfp4Weight if precision_of(dialect) == "nvfp4" else Fp8Weight
    assert isinstance(quantized.self_conditioning.gate_proj.weight, torch.Tensor)  # left in full precision
    checked = 0
    for name, module in quantized.named_modules():
        if isinstance(module, (Fp8Weight, Nvfp4Weight)):
            assert isinstance(module, expected_type), name
            # A misread scale layout (blocks, inverted global scale, gate/up order) shows as a large error here.
            assert relative_error(module, reference.get_parameter(name)) < MAX_WEIGHT_ERROR[precision_of(dialect)]
            checked += 1
    layers = len(reference.layers)
    assert checked == 2 * layers + 3 * layers + (3 * layers + 1)  # experts, dense MLP, q/k/o + v on sliding layers


def tiny_logits(folder) -> torch.Tensor:
    engine = dgemma_runtime.load(folder, device="cpu", dtype="float32")
    assert engine.tokenizer is not None
    prompt = torch.tensor([engine.tokenizer.chat([Message("user", "Tell me a story about a red kite.")])])
    canvas = torch.randint(0, engine.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(2))
    cache = KVCache(engine.config, 1, prompt.shape[1], engine.device, engine.dtype)
    with torch.no_grad():
        engine.model.encode(prompt, cache)
        return engine.model.decode(canvas, cache, None)


@pytest.fixture(scope="module")
def tiny_reference() -> torch.Tensor:
    return tiny_logits(TINY)


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_trained_model_logits_stay_close(tiny_reference, tmp_path, dialect):
    ours = tiny_logits(write_quantized(TINY, tmp_path / dialect, dialect, dense=True))
    similarity = torch.nn.functional.cosine_similarity(ours.flatten(), tiny_reference.flatten(), dim=0).item()
    top1 = (ours.argmax(-1) == tiny_reference.argmax(-1)).float().mean().item()
    assert similarity >= MIN_COSINE[precision_of(dialect)], similarity
    assert top1 >= MIN_TOP1[precision_of(dialect)], top1


def test_experts_only_checkpoint_keeps_attention_in_full_precision(full_precision, tmp_path):
    folder = write_quantized(full_precision, tmp_path / "q", "modelopt-nvfp4", dense=False)
    layer = dgemma_runtime.load(folder, device="cpu", dtype="float32").model.layers[1]
    assert isinstance(layer.experts.down_proj, Nvfp4Weight)
    assert isinstance(layer.mlp.gate_proj.weight, torch.Tensor)


@pytest.mark.parametrize(("precision", "dialect"), [("nvfp4", "modelopt-nvfp4"), ("fp8", "modelopt-fp8-channel")])
def test_quantize_at_load_equals_the_prequantized_checkpoint(full_precision, tmp_path, precision, dialect):
    on_disk = dgemma_runtime.load(write_quantized(full_precision, tmp_path / "q", dialect), device="cpu").model
    at_load = dgemma_runtime.load(full_precision, device="cpu", quant=precision, quant_dense=True).model
    on_disk_buffers = dict(on_disk.named_buffers())
    compared = 0
    for name, buffer in at_load.named_buffers():
        if name.endswith(("q", "scale", "packed", "block_scale", "global_scale")):
            assert torch.equal(as_bytes(buffer), as_bytes(on_disk_buffers[name])), name
            compared += 1
    layers = len(at_load.layers)
    weights = 2 * layers + 3 * layers + (3 * layers + 1)  # experts, dense MLP, q/k/o + v on sliding layers
    assert compared == weights * (3 if precision == "nvfp4" else 2)


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t  # float8 has no equality kernel on the CPU


def test_quantize_at_load_leaves_attention_alone_unless_asked(full_precision):
    model = dgemma_runtime.load(full_precision, device="cpu", quant="fp8").model
    assert isinstance(model.layers[0].experts.gate_up_proj, Fp8Weight)
    assert isinstance(model.layers[0].self_attn.q_proj.weight, torch.Tensor)


def test_quantize_at_load_refuses_a_quantized_checkpoint(full_precision, tmp_path):
    folder = write_quantized(full_precision, tmp_path / "q", "ct-fp8-channel")
    with pytest.raises(OptionError, match="already compressed-tensors float-quantized"):
        dgemma_runtime.load(folder, device="cpu", quant="nvfp4")


def test_unknown_quant_option_is_an_option_error(full_precision):
    with pytest.raises(OptionError, match="unknown quantization 'int3'"):
        dgemma_runtime.load(full_precision, device="cpu", quant="int3")


@pytest.mark.parametrize(
    ("quantization_config", "named"),
    [
        ({"quant_method": "gptq", "bits": 4}, "quant_method 'gptq'"),
        ({"quant_method": "compressed-tensors", "format": "pack-quantized"}, "format 'pack-quantized'"),
        ({"quant_method": "modelopt", "quant_algo": "MXFP8"}, "quant_algo 'MXFP8'"),
    ],
)
def test_unsupported_schemes_are_named(full_precision, tmp_path, quantization_config, named):
    folder = write_quantized(full_precision, tmp_path / "q", "ct-fp8-channel")
    config = json.loads((folder / "config.json").read_text()) | {"quantization_config": quantization_config}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=named):
        dgemma_runtime.load(folder, device="cpu")


def _edit_tensors(folder, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")


def test_a_missing_scale_is_reported(full_precision, tmp_path):
    folder = write_quantized(full_precision, tmp_path / "q", "ct-nvfp4")
    _edit_tensors(folder, lambda t: t.pop("model.decoder.layers.0.experts.3.up_proj.weight_global_scale"))
    with pytest.raises(CheckpointError, match=r"1 missing: model\.decoder\.layers\.0\.experts\.3\.up_proj"):
        dgemma_runtime.load(folder, device="cpu")


def test_a_misshaped_block_scale_is_reported(full_precision, tmp_path):
    folder = write_quantized(full_precision, tmp_path / "q", "ct-nvfp4")
    name = "model.decoder.layers.1.self_attn.q_proj.weight_scale"

    def shrink(tensors):
        tensors[name] = tensors[name][:, :-1].contiguous()

    _edit_tensors(folder, shrink)
    with pytest.raises(CheckpointError, match=r"wrong shape: model\.decoder\.layers\.1\.self_attn\.q_proj"):
        dgemma_runtime.load(folder, device="cpu")


def test_quantized_model_generates(full_precision, tmp_path):
    engine = dgemma_runtime.load(write_quantized(full_precision, tmp_path / "q", "ct-nvfp4"), device="cpu")
    result = engine.generate(list(range(3, 15)), max_new_tokens=32, seed=0)
    assert len(result.token_ids) > 0
    assert result.stats.decoder_forwards >= 2
