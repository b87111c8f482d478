"""The Gemma 4 chat format and incremental decoding into answer and thinking text."""

from __future__ import annotations

import pytest
from dgemma_runtime import Message, TextStream, Tokenizer, render_chat
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

SPECIALS = ["<pad>", "<eos>", "<bos>", "<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|think|>"]
EOS = (1, 4)  # <eos>, <turn|>


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    """A small byte-level BPE holding the chat format's special tokens."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(["the little boat sailed home", "thought about the sea", "café ☕ 日本"] * 20, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    hf.save(str(path))
    return Tokenizer(path)


def test_thinking_off_ends_with_an_empty_closed_thought_channel():
    text = render_chat([Message("user", "  Why is the sky blue? ")])
    assert text == "<bos><|turn>user\nWhy is the sky blue?<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"


def test_thinking_on_opens_a_system_turn_and_leaves_the_model_turn_open():
    text = render_chat([Message("system", "Be brief."), Message("user", "Hi")], think=True)
    assert text == "<bos><|turn>system\n<|think|>\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"


def test_history_drops_earlier_reasoning_and_maps_assistant_to_model():
    messages = [
        Message("user", "a"),
        Message("assistant", "<|channel>thought\nhmm<channel|>Answer A"),
        Message("user", "b"),
    ]
    assert render_chat(messages) == (
        "<bos><|turn>user\na<turn|>\n<|turn>model\nAnswer A<turn|>\n<|turn>user\nb<turn|>\n"
        "<|turn>model\n<|channel>thought\n<channel|>"
    )


def test_special_tokens_in_the_template_encode_to_their_ids(tokenizer):
    ids = tokenizer.chat([Message("user", "the boat")])
    assert ids[:2] == [2, 3] and ids[-1] == 6 and ids.count(5) == 1 and ids.count(4) == 1
    assert tokenizer.decode(ids) == "user\nthe boat\nmodel\nthought\n"


def test_stream_splits_thinking_from_the_answer_across_canvases(tokenizer):
    ids = [5, *tokenizer.encode("thought\nthe sea"), 6, *tokenizer.encode("the boat sailed"), 4, 99, 98]
    stream = TextStream(tokenizer, EOS)
    answer, thinking = "", ""
    for start in range(0, len(ids), 3):  # canvases of three tokens
        a, t = stream.feed(ids[start : start + 3])
        answer, thinking = answer + a, thinking + t
    assert thinking == "the sea"
    assert answer == "the boat sailed"


def test_a_character_split_across_canvases_is_never_garbled(tokenizer):
    ids = tokenizer.encode("café ☕ 日本")
    stream = TextStream(tokenizer, EOS)
    pieces = [stream.feed([token]) for token in ids] + [stream.feed([EOS[0]])]
    assert all("\ufffd" not in a for a, _ in pieces)
    assert "".join(a for a, _ in pieces) == "café ☕ 日本"


def test_a_follow_up_turn_continues_after_the_cached_answer():
    from dgemma_runtime import render_follow_up

    assert render_follow_up("more", closed=True) == (
        "\n<|turn>user\nmore<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
    )
    assert render_follow_up("more", think=True, closed=False) == "<turn|>\n<|turn>user\nmore<turn|>\n<|turn>model\n"
