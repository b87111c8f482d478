"""Engine behaviour beyond parity: sessions, the event stream, options and the RNG contract."""

from __future__ import annotations

import dgemma_runtime
import pytest
import torch
from dgemma_runtime import CanvasEvent, ContextFullError, FinalEvent, OptionError, StepEvent

from tests.support.checkpoints import TinySpec, write_checkpoint

P1, P2 = [2, 10, 11, 12, 13, 14], [20, 21, 22]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = write_checkpoint(TinySpec(seed=8), tmp_path_factory.mktemp("ckpt"))
    return dgemma_runtime.load(folder, device="cpu", dtype="float32")


def test_a_follow_up_turn_encodes_only_new_tokens_and_matches_a_fresh_run(engine):
    session = engine.new_session(context=128)
    first = engine.generate(P1, session=session, seed=1, max_new_tokens=32)
    assert session.cache.length == len(P1) + 16  # the last canvas waits, unencoded, for the next turn
    second = engine.generate(P2, session=session, seed=2, max_new_tokens=16)
    assert second.stats.prompt_tokens == 16 + len(P2)
    assert session.cache.length == len(P1) + 32 + len(P2)
    fresh = engine.generate(P1 + first.token_ids + P2, seed=2, max_new_tokens=16)
    assert second.token_ids == fresh.token_ids


def test_a_full_session_fails_before_any_work(engine):
    session = engine.new_session(context=8)
    with pytest.raises(ContextFullError, match="context is full"):
        engine.generate(P1 * 2, session=session, seed=1, max_new_tokens=16)
    assert session.cache.length == 0


def test_the_event_stream_is_consistent_with_the_stats(engine):
    events = list(engine.stream([P1, P1[::-1]], seed=3, max_new_tokens=32))
    steps = [e for e in events if isinstance(e, StepEvent)]
    canvases = [e for e in events if isinstance(e, CanvasEvent)]
    final = events[-1]
    assert isinstance(final, FinalEvent) and not any(isinstance(e, FinalEvent) for e in events[:-1])
    stats = final.stats
    assert len(steps) == stats.decoder_forwards  # one step event per row per forward it took part in
    for row in (0, 1):
        mine = [c for c in canvases if c.row == row]
        assert [c.canvas for c in mine] == list(range(len(mine)))
        assert [c.done for c in mine] == [False] * (len(mine) - 1) + [True]  # a row ends exactly once
    assert sum(len(c.ids) for c in canvases) == stats.generated_tokens
    assert stats.tokens_per_forward == pytest.approx(stats.generated_tokens / stats.decoder_forwards)
    assert stats.total_seconds >= stats.decode_seconds + stats.sample_seconds
    for event in steps:
        assert len(event.ids) == len(event.accepted) == len(event.changed) == 16
        assert any(event.accepted)  # the lowest-entropy position is always accepted
    last_step = [e for e in steps if e.row == 0 and e.canvas == 0][-1]
    assert list(last_step.ids) == list(canvases[0].ids)  # the canvas is the last argmax


def test_same_seed_same_ids_and_the_global_rng_is_untouched(engine):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = engine.generate(P1, seed=5, max_new_tokens=16)
    assert torch.equal(torch.get_rng_state(), before)
    b = engine.generate(P1, seed=5, max_new_tokens=16)
    c = engine.generate(P1, seed=6, max_new_tokens=16)
    assert a.token_ids == b.token_ids != c.token_ids


def test_max_new_tokens_is_exact_though_whole_canvases_are_denoised(engine):
    whole = engine.generate(P1, seed=1, max_new_tokens=32)
    result = engine.generate(P1, seed=1, max_new_tokens=17)
    assert result.stats.canvases == 2 and result.token_ids == whole.token_ids[:17]
    assert result.stats.generated_tokens == 17 and result.stats.finish_reason == "length"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_denoising_steps", 0),
        ("t_min", 0.0),
        ("entropy_bound", -1.0),
        ("max_new_tokens", 0),
        ("t_max", 0.1),
    ],
)
def test_bad_options_are_rejected_with_a_clear_message(engine, option, value):
    with pytest.raises(OptionError):
        engine.generate(P1, **{option: value})


def test_unknown_options_are_an_error_not_silently_dropped(engine):
    with pytest.raises(OptionError, match="top_p"):
        engine.generate(P1, top_p=0.9)


def test_every_prompt_of_a_batch_needs_a_token(engine):
    with pytest.raises(OptionError, match="at least one token"):
        engine.generate([[1, 2, 3], []])


def test_a_stream_closed_mid_canvas_leaves_the_session_consistent(engine):
    session = engine.new_session(context=256)
    stream = engine.stream(P1, session=session, seed=1, max_new_tokens=48)
    canvases = []
    for event in stream:
        if isinstance(event, CanvasEvent):
            canvases.append(event)
        if isinstance(event, StepEvent) and event.canvas == 1 and event.step == 3:
            break
    stream.close()
    # canvas 0, the answer so far, is already in the cache; nothing of canvas 1 is kept; the turn is open
    assert len(canvases) == 1 and session.pending == [] and not session.closed
    assert session.cache.length == len(P1) + 16
    follow = engine.generate(P2, session=session, seed=2, max_new_tokens=16)
    assert session.cache.length == len(P1) + 16 + len(P2) and len(follow.token_ids) == 16


def test_device_and_cpu_sampling_agree_on_the_same_noise():
    """The accelerator path samples every position from Exp(1) noise without a host sync; the CPU path turns
    raw 64-bit draws into Exp(1) only where a sample is kept. The same draws must give the same kept samples."""
    from dgemma_runtime import sampler

    g = torch.Generator().manual_seed(0)
    B, L, V = 2, 7, 13
    probs = torch.softmax(torch.randn(B, L, V, generator=g), -1)
    keep = torch.rand(B, L, generator=g) > 0.4
    words = torch.empty(B * L, V, dtype=torch.int64).random_(generator=g)
    exponential = (-torch.log1p(-sampler.uniform_from_bits(words))).float()
    renoise = torch.zeros(B, L, dtype=torch.long)
    on_cpu = sampler.sample(probs, sampler.StepNoise(words, renoise), keep)
    on_device = sampler.sample(probs, sampler.StepNoise(exponential, renoise), keep)
    assert torch.equal(on_cpu[keep], on_device[keep])
    assert keep.any() and (~keep).any()


def test_raw_draws_become_the_uniforms_the_generator_gives():
    """The CPU keeps each entry's raw 64-bit word; turned into a uniform it must be exactly what `uniform_` in
    float64 draws from the same generator state (and what multinomial's noise is made of)."""
    from dgemma_runtime import sampler

    words = torch.empty(4, 1000, dtype=torch.int64).random_(generator=torch.Generator().manual_seed(3))
    uniforms = torch.empty(4, 1000, dtype=torch.float64).uniform_(generator=torch.Generator().manual_seed(3))
    assert torch.equal(sampler.uniform_from_bits(words), uniforms)


def test_the_denormal_floor_changes_no_sample_entropy_or_soft_embedding():
    """`floor_logits` keeps the CPU softmax off denormal floats; everything computed from the probabilities must
    come out as before: the same samples, the same entropies, the same self-conditioning product."""
    from dgemma_runtime import sampler

    g = torch.Generator().manual_seed(0)
    B, L, V = 2, 16, 4096
    logits = torch.randn(B, L, V, generator=g) * 40  # spread far wider than the floor
    top = logits.max(-1).values
    floored = sampler.floor_logits(logits.clone(), top)
    tiny = torch.finfo(torch.float32).tiny
    probs, probs_floored = torch.softmax(logits, -1), torch.softmax(floored, -1)
    assert ((probs > 0) & (probs < tiny)).any()  # denormals before
    assert (probs_floored >= tiny).all()  # none after
    big = probs > 1e-30
    assert torch.equal(probs[big], probs_floored[big])
    scratch = torch.empty_like(logits)
    entropy = sampler.entropy_(logits.clone(), probs, top, scratch)
    assert torch.equal(entropy, sampler.entropy_(floored.clone(), probs_floored, top, scratch))
    noise = sampler.NoiseSource((B, L), V, g).draw()
    keep = torch.ones(B, L, dtype=torch.bool)
    assert torch.equal(sampler.sample(probs, noise, keep), sampler.sample(probs_floored, noise, keep))
    embedding = torch.randn(V, 64, generator=g)
    torch.testing.assert_close(probs_floored @ embedding, probs @ embedding, rtol=1e-6, atol=1e-30)


def test_the_entropy_is_the_reference_categoricals_bit_for_bit():
    """`entropy_` computes the logsumexp in a reused buffer from the known row maxima; the result must be exactly
    the entropy of the reference's Categorical: -sum(p · (logits - logsumexp(logits)))."""
    from dgemma_runtime import sampler

    logits = torch.randn(3, 8, 5000, generator=torch.Generator().manual_seed(4)) * 6
    probs = torch.softmax(logits, -1)
    expected = -((logits - torch.logsumexp(logits, -1, keepdim=True)) * probs).sum(-1)
    scratch = torch.full_like(logits, float("nan"))  # whatever it held before must not matter
    entropy = sampler.entropy_(logits.clone(), probs, logits.max(-1).values, scratch)
    assert torch.equal(entropy, expected)


def test_the_fused_gpu_step_generates_reproducibly(engine, monkeypatch):
    """The engine through `FusedStep` (its kernel in the interpreter, as a GPU would run it compiled): a batch
    of two rows generates two canvases of in-vocabulary ids with consistent events, and a seed repeats them."""
    from dgemma_runtime import sampler

    monkeypatch.setattr(sampler.FusedStep, "available", staticmethod(lambda device: True))
    options = {"seed": 5, "max_new_tokens": 32, "max_denoising_steps": 3}
    events = list(engine.stream([P1, P2], **options))
    final = events[-1]
    assert isinstance(final, FinalEvent)
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert len(steps) == final.stats.decoder_forwards and steps
    for ids in final.token_ids:
        assert ids and all(0 <= t < engine.config.vocab_size for t in ids)
    again = list(engine.stream([P1, P2], **options))[-1]
    assert again.token_ids == final.token_ids
