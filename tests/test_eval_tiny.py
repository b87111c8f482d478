"""scripts/eval_tiny.py: its prompts are held out from the corpus, its scoring counts what it claims to count, and it
drives the real engine through both conversation paths."""

from __future__ import annotations

import random
import re
from types import SimpleNamespace

import dgemma_runtime
import pytest
from dgemma_runtime import Tokenizer

from tests.support.checkpoints import TOKENIZER, write_chat_checkpoint
from tests.support.scripts import script

EOS = frozenset((1, 106, 50))


ev = script("eval_tiny")
corpus = ev.corpus


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(TOKENIZER)


def _matches(text: str, templates) -> bool:
    return any(re.fullmatch(re.escape(t).replace(r"\{\}", ".+").replace(r"\{noun\}", ".+"), text) for t in templates)


def test_items_use_held_out_phrasings_and_the_subjects_they_claim():
    items = ev.items(40, seed=5)
    assert items == ev.items(40, seed=5) and items != ev.items(40, seed=6)
    follow_ups = [t for ts in corpus.HELD_OUT_FOLLOW_UPS.values() for t in ts]
    known = {k.noun for k in corpus.HEROES}
    for item in items:
        for text in (item.first, item.known, item.unseen, item.thinking):
            assert _matches(text, corpus.HELD_OUT_REQUESTS), text
        assert _matches(item.follow_up, follow_ups) and _matches(item.question, corpus.HELD_OUT_NAME_QUESTIONS)
        assert item.known_noun in known and item.known.rstrip(".?").endswith(item.known_noun)
        assert item.unseen_noun in {k.noun for k in corpus.HELD_OUT_KINDS}
        assert item.names_subject == (item.follow_noun in item.follow_up)
        assert item.follow_noun in item.question
    assert {i.names_subject for i in items} == {True, False}
    assert len({i.seed for i in items}) == len(items)


def test_reading_a_reply_splits_thought_and_answer(tok):
    specials = ev.special_ids(tok)
    assert {0, 1, 2, 100, 101, 105, 106} <= specials and not specials & set(tok.encode("Pip the fox."))
    story = tok.encode("Pip the fox was brave.")
    thought = [tok.channel_open, *tok.encode("thought\nI will call the fox Pip."), tok.channel_close]
    reply = ev.read([*thought, *story, 106], tok, EOS, specials)
    assert reply == ev.Reply("Pip the fox was brave.", "I will call the fox Pip.", ended=True, clean=True)
    assert ev.read(story, tok, EOS, specials) == ev.Reply("Pip the fox was brave.", None, ended=False, clean=True)
    leaked = ev.read([*story, tok.channel_open, *story, 106], tok, EOS, specials)  # a second channel mid-answer
    assert leaked.ended and not leaked.clean
    empty = ev.read([tok.channel_open, tok.channel_close, 106], tok, EOS, specials)
    assert empty.thought == "" and empty.answer == "" and empty.ended


def test_mentions_and_hero_names():
    assert ev.mentions("Two bears lived there.", "bear") and ev.mentions("The Fire engine raced.", "fire engine")
    assert not ev.mentions("He had a bearded friend.", "bear")
    assert ev.hero_name("Once upon a time, a brave fox named Pip met Hazel.") == "Pip"
    assert ev.hero_name("Once upon a time, a fox lived in a wood.") is None


class ScriptedEngine:
    """Answers as a well-trained dgemma-tiny should, with the corpus generator: a story whose hero is the subject
    asked for (the first request's again for "one more"), the hero's name when asked, a thought first when
    thinking is on. With `wrong_names` it answers name questions with a name the story does not have."""

    def __init__(self, tok: Tokenizer, wrong_names: bool = False) -> None:
        self.tokenizer, self.wrong_names = tok, wrong_names
        self.defaults = SimpleNamespace(eos_token_ids=sorted(EOS))
        self.kinds = {k.noun: k for k in (*corpus.HEROES, *corpus.HELD_OUT_KINDS)}

    def new_session(self, context: int) -> SimpleNamespace:
        return SimpleNamespace(closed=True, text="")

    def generate(self, ids, session=None, seed=0, max_new_tokens=256) -> SimpleNamespace:
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        if session is not None:  # the session passes only the new tokens: keep the conversation
            session.text += text
            text = session.text
        users = re.findall(r"<\|turn>user\n(.*?)<turn\|>", text, re.S)
        stories = re.findall(r"<\|turn>model\n(?:<\|channel>thought\n[^<]*<channel\|>)?([^<]+)<turn\|>", text)
        if _matches(users[-1], corpus.HELD_OUT_NAME_QUESTIONS):
            name = ev.hero_name(stories[-1])
            if self.wrong_names:
                name = next(n for n in sorted(ev.NAMES) if n not in stories[-1])
            answer = f"It was {name}."
        else:
            nouns = [n for n in self.kinds if re.search(rf"\b{n}\b", users[-1])] or [
                n for n in self.kinds if re.search(rf"\b{n}\b", users[0])
            ]
            rng = random.Random(seed)
            answer = corpus.tell(rng, corpus.make_hero(rng, self.kinds[max(nouns, key=len)])).text
        if text.endswith("<|turn>model\n"):  # thinking on: the model opens the channel itself
            answer = f"<|channel>thought\nI will tell it.<channel|>{answer}"
        if session is not None:
            session.text += answer + "<turn|>"
        return SimpleNamespace(token_ids=[*self.tokenizer.encode(answer), 106])


def test_a_model_that_does_everything_right_scores_full_marks(tok):
    figures = ev.Evaluator(ScriptedEngine(tok)).evaluate(6, seed=2)
    assert all(figures[key] == 1.0 for key in ev.FIGURES), figures
    sample = figures["samples"][0]
    assert sample["session"]["name"] and sample["session"]["name"] in sample["session"]["reply"]
    assert "below" not in ev.report(figures)


def test_names_the_story_does_not_have_score_zero(tok):
    figures = ev.Evaluator(ScriptedEngine(tok, wrong_names=True)).evaluate(6, seed=2)
    assert figures["name_session"] == figures["name_reencoded"] == 0.0
    assert figures["on_topic"] == figures["follow_up_session"] == 1.0
    line = next(line for line in ev.report(figures).splitlines() if line.startswith("(b) hero's name recalled, se"))
    assert line.endswith(" 0.0%  below 90%"), line


def test_it_drives_the_real_engine_through_both_paths(tmp_path):
    engine = dgemma_runtime.load(write_chat_checkpoint(tmp_path / "chat"), device="cpu", dtype="float32")
    figures = ev.Evaluator(engine, max_new_tokens=16).evaluate(1, seed=0)
    assert set(ev.FIGURES) <= set(figures) and all(0.0 <= figures[key] <= 1.0 for key in ev.FIGURES)
    talk = figures["samples"][0]
    assert talk["session"]["follow_up"] != talk["reencoded"]["follow_up"]  # different prefixes, different answers
