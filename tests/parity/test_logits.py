"""Decoder logits against transformers' forward pass, float32, after encoding in several chunks."""

from __future__ import annotations

import dgemma_runtime
import pytest
import torch
from dgemma_runtime.cache import KVCache
from transformers import DynamicCache

from tests.support.checkpoints import TinySpec, load_reference, write_checkpoint

TOLERANCE = 1e-5


def max_relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def reference_logits(model, chunks: list[torch.Tensor], canvas: torch.Tensor, sc_logits) -> torch.Tensor:
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    position = 0
    for chunk in chunks:
        positions = torch.arange(position, position + chunk.shape[1])[None]
        model.model.encoder(input_ids=chunk, past_key_values=cache, position_ids=positions)
        position += chunk.shape[1]
    out = model(
        decoder_input_ids=canvas,
        past_key_values=cache,
        self_conditioning_logits=sc_logits,
        decoder_position_ids=torch.arange(position, position + canvas.shape[1])[None],
    )
    return out.logits


@pytest.mark.parametrize("with_self_conditioning", [False, True])
@pytest.mark.parametrize("chunk_lengths", [[5], [12], [12, 16, 16], [3, 4]])
def test_decoder_logits_match(tmp_path, with_self_conditioning, chunk_lengths):
    spec = TinySpec(
        text={
            "num_hidden_layers": 3,
            "layer_types": ["sliding_attention", "full_attention", "full_attention"],
        },
        seed=4,
    )
    folder = write_checkpoint(spec, tmp_path / "ckpt")
    reference = load_reference(folder)
    engine = dgemma_runtime.load(folder, device="cpu", dtype="float32")
    g = torch.Generator().manual_seed(9)
    B, L, V = 2, spec.canvas_length, 512
    chunks = [torch.randint(0, V, (B, n), generator=g) for n in chunk_lengths]
    canvas = torch.randint(0, V, (B, L), generator=g)
    sc = 3 * torch.randn(B, L, V, generator=g) if with_self_conditioning else None

    with torch.no_grad():
        expected = reference_logits(reference, chunks, canvas, sc)
        cache = KVCache(engine.config, B, sum(chunk_lengths), engine.device, engine.dtype)
        for chunk in chunks:
            engine.model.encode(chunk, cache)
        probs = None if sc is None else torch.softmax(sc, dim=-1)
        first = engine.model.decode(canvas, cache, probs)
        # Again, into a reused buffer: the decoder must not have written the cache, nor the buffer changed a bit.
        buffer = torch.full((B, L, V), float("nan"))
        again = engine.model.decode(canvas, cache, probs, out=buffer)

    assert max_relative_error(first, expected) <= TOLERANCE
    assert torch.equal(first, again) and again.data_ptr() == buffer.data_ptr()


def test_bfloat16_logits_stay_close(tmp_path):
    """bf16 is not bit-exact with the reference, but must stay close to the float32 result."""
    folder = write_checkpoint(TinySpec(seed=6), tmp_path / "ckpt")
    ids = torch.randint(0, 512, (1, 10), generator=torch.Generator().manual_seed(1))
    canvas = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(2))
    results = []
    for dtype in ("float32", "bfloat16"):
        engine = dgemma_runtime.load(folder, device="cpu", dtype=dtype)
        cache = KVCache(engine.config, 1, 10, engine.device, engine.dtype)
        with torch.no_grad():
            engine.model.encode(ids, cache)
            results.append(engine.model.decode(canvas, cache, None))
            buffer = torch.full((1, 16, 512), float("nan"))
            assert torch.equal(engine.model.decode(canvas, cache, None, out=buffer), results[-1])
    assert results[1].dtype == torch.float32  # logits are always float32
    assert max_relative_error(results[1], results[0]) < 0.05


def test_the_differentiable_kv_store_gives_the_same_logits(tmp_path):
    """Training runs the model over SequenceKV; it must compute what inference computes."""
    from dgemma_runtime.cache import SequenceKV

    spec = TinySpec(seed=12)
    engine = dgemma_runtime.load(write_checkpoint(spec, tmp_path / "ckpt"), device="cpu", dtype="float32")
    g = torch.Generator().manual_seed(3)
    chunks = [torch.randint(0, 512, (2, n), generator=g) for n in (11, 16)]
    canvas = torch.randint(0, 512, (2, 16), generator=g)
    probs = torch.softmax(torch.randn(2, 16, 512, generator=g), dim=-1)
    results = []
    for store in (KVCache(engine.config, 2, 27, engine.device, engine.dtype), SequenceKV(engine.config)):
        with torch.no_grad():
            for chunk in chunks:
                engine.model.encode(chunk, store)
            results.append(engine.model.decode(canvas, store, probs))
    assert max_relative_error(results[1], results[0]) <= TOLERANCE
