"""Conversations: a follow-up turn through a Session (only its new tokens encoded: the REPL's path) against the whole
conversation re-encoded (the server's path, and the REPL's after /set), and the training examples built for both."""

from __future__ import annotations

import dgemma_runtime
import pytest
import torch
from dgemma_runtime import Message, Tokenizer, render_follow_up
from dgemma_runtime.config import parse_config
from dgemma_runtime.model import DiffusionGemma

from tests.support.checkpoints import TOKENIZER, write_chat_checkpoint
from tests.support.scripts import script

FIRST, FOLLOW_UP = "Tell me a story about a fox.", "Now one about a bear."
ANSWER = "Once upon a time, a brave fox named Pip lived in a deep forest."
PLAN = "The user wants a story about a fox. I will call the fox Pip."


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return dgemma_runtime.load(write_chat_checkpoint(tmp_path_factory.mktemp("chat")), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(TOKENIZER)


def _without(ids: list[int], start: int, drop: list[int]) -> list[int]:
    assert ids[start : start + len(drop)] == drop, "the tokens are not where expected"
    return ids[:start] + ids[start + len(drop) :]


def test_the_session_and_re_encoding_give_the_same_ids_for_the_same_tokens(engine):
    tok = engine.tokenizer
    session = engine.new_session(context=512)
    prompt = tok.chat([Message("user", FIRST)])
    first = engine.generate(prompt, session=session, seed=1, max_new_tokens=32)
    follow_up = tok.encode(render_follow_up(FOLLOW_UP, closed=session.closed))
    second = engine.generate(follow_up, session=session, seed=2, max_new_tokens=32)
    assert second.stats.prompt_tokens == 16 + len(follow_up)  # the last canvas of the answer, then the new turn
    # The same tokens encoded whole, without a session: the same answer, id for id.
    again = engine.generate(prompt + first.token_ids + follow_up, seed=2, max_new_tokens=32)
    assert again.token_ids == second.token_ids
    assert engine.generate(prompt + first.token_ids + follow_up, seed=3, max_new_tokens=32).token_ids != again.token_ids


@pytest.mark.parametrize("closed", [True, False])
def test_re_encoding_drops_the_empty_thought_channel_that_the_session_keeps(tok, closed):
    """Thinking off, the generation prompt ends with an empty thought channel; the session keeps it before the
    answer, `render_chat` writes the history's model turn without it. Nothing else differs, whether or not the
    answer was cut short (the follow-up then closes the turn, as the re-encoded history always does)."""
    prompt = tok.chat([Message("user", FIRST)])
    said = tok.encode(ANSWER) + ([tok.turn_close] if closed else [])
    session = prompt + said + tok.encode(render_follow_up(FOLLOW_UP, closed=closed))
    whole = tok.chat([Message("user", FIRST), Message("model", ANSWER), Message("user", FOLLOW_UP)])
    channel = tok.encode("<|channel>thought\n<channel|>")
    where = len(prompt) - len(channel)  # right after the first "<|turn>model\n"
    assert session[:where] == whole[:where] and session[where] != whole[where]
    assert _without(session, where, channel) == whole


def test_re_encoding_drops_the_thought_that_the_session_keeps(tok):
    """Thinking on, the model writes its thought into the channel; the session keeps it in the cache, the
    re-encoded history drops it (`render_chat` strips earlier reasoning)."""
    prompt = tok.chat([Message("user", FIRST)], think=True)
    thought = tok.encode(f"<|channel>thought\n{PLAN}<channel|>")
    said = thought + tok.encode(ANSWER) + [tok.turn_close]
    session = prompt + said + tok.encode(render_follow_up(FOLLOW_UP, think=True))
    model_turn = f"<|channel>thought\n{PLAN}<channel|>{ANSWER}"  # as a client would send it back
    whole = tok.chat([Message("user", FIRST), Message("model", model_turn), Message("user", FOLLOW_UP)], think=True)
    assert session[: len(prompt)] == whole[: len(prompt)]
    assert _without(session, len(prompt), thought) == whole


def test_the_dropped_tokens_change_the_answer(engine):
    """The two paths are not interchangeable: the same seed after the two prefixes gives different answers."""
    tok = engine.tokenizer
    prompt = tok.chat([Message("user", FIRST)])
    session = prompt + tok.encode(ANSWER) + [tok.turn_close] + tok.encode(render_follow_up(FOLLOW_UP))
    whole = tok.chat([Message("user", FIRST), Message("model", ANSWER), Message("user", FOLLOW_UP)])
    assert session != whole
    a = engine.generate(session, seed=4, max_new_tokens=16).token_ids
    b = engine.generate(whole, seed=4, max_new_tokens=16).token_ids
    assert a != b


# -- training examples ---------------------------------------------------------------------------------------


RECORD = {
    "prompt": FIRST,
    "story": ANSWER,
    "system": "Keep your stories short and happy.",
    "turns": [
        {"user": "What was the fox's name?", "model": "The fox's name was Pip."},
        {"user": FOLLOW_UP, "model": "A bear named Bo lived in a cave."},
    ],
}


def _pairs(trainer, record: dict, tok: Tokenizer) -> list[tuple[list[int], list[int]]]:
    buckets = trainer.examples([record], tok, seed=0)
    return sorted((p for pairs in buckets.values() for p in pairs), key=lambda pair: len(pair[0]))


@pytest.mark.parametrize("think", [False, True])
def test_training_prefixes_are_the_conversation_as_render_chat_writes_it(tok, monkeypatch, think):
    trainer = script("train_tiny")
    monkeypatch.setattr(trainer, "SESSION_FRACTION", 0.0)
    record = RECORD | (
        {"thoughts": [PLAN, "The user asks for the fox's name. It was Pip.", "A bear, Bo."]} if think else {}
    )
    pairs = _pairs(trainer, record, tok)
    assert len(pairs) == 3  # one canvas per answer: the loss falls on the three model turns and nothing else
    history = [Message("system", RECORD["system"])]
    said = [(FIRST, ANSWER), *((t["user"], t["model"]) for t in RECORD["turns"])]
    for (prefix, canvas), (user, answer), thought in zip(pairs, said, record.get("thoughts", [None] * 3), strict=True):
        assert prefix == tok.chat([*history, Message("user", user)], think=think)
        target = answer if thought is None else f"<|channel>thought\n{thought}<channel|>{answer}"
        assert canvas == [*tok.encode(target), tok.turn_close] + [0] * (64 - len(tok.encode(target)) - 1)
        history += [Message("user", user), Message("model", answer)]


def test_training_prefixes_as_a_session_holds_them(tok, monkeypatch):
    trainer = script("train_tiny")
    monkeypatch.setattr(trainer, "SESSION_FRACTION", 1.0)
    record = RECORD | {"thoughts": [PLAN, "The user asks for the fox's name. It was Pip.", "A bear, Bo."]}
    pairs = _pairs(trainer, record, tok)
    cache = tok.chat([Message("system", RECORD["system"]), Message("user", FIRST)], think=True)
    assert pairs[0][0] == cache
    said = [
        f"<|channel>thought\n{t}<channel|>{a}"
        for t, a in zip(record["thoughts"], [ANSWER, *(t["model"] for t in RECORD["turns"])], strict=True)
    ]
    for k, turn in enumerate(RECORD["turns"], start=1):
        cache = (
            cache + tok.encode(said[k - 1]) + [tok.turn_close] + tok.encode(render_follow_up(turn["user"], think=True))
        )
        assert pairs[k][0] == cache  # every earlier thought kept, each follow-up as the REPL renders it


def test_one_training_step_on_a_conversation_reaches_every_weight(tok):
    """The loss on the last answer of a conversation backpropagates to every weight of dgemma-tiny, with and without
    self-conditioning (autograd needs each op of the forward pass, the soft-capped logits included, to keep what
    its backward reads)."""
    trainer = script("train_tiny")
    model = DiffusionGemma(parse_config(trainer.model_config(2688)))
    trainer.init_weights(model, seed=0)
    prefix, canvas = _pairs(trainer, RECORD, tok)[-1]  # the follow-up's answer, after the whole conversation
    generator = torch.Generator().manual_seed(0)
    reached: set[str] = set()
    for self_condition in (False, True):
        model.zero_grad(set_to_none=True)
        loss = trainer.loss_on(model, torch.tensor([prefix]), torch.tensor([canvas]), generator, self_condition)
        loss.backward()
        assert torch.isfinite(loss) and 6.0 < loss.item() < 9.0  # about ln(2688) = 7.9 for random weights
        reached |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    # The encoder stops before the last layer's feed-forward (only the cache is kept), so its scalar is never used.
    unused = {f"layers.{len(model.layers) - 1}.encoder_scalar"}
    assert reached == {n for n, _ in model.named_parameters()} - unused
