"""The dgemma-tiny story corpus: deterministic, mostly chat-framed, on topic, and of a learnable size."""

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_story_corpus.py"


def _load_script() -> ModuleType:
    # scripts/ is not a package, so load the generator straight from its file.
    spec = importlib.util.spec_from_file_location("make_story_corpus", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


corpus = _load_script()


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


@pytest.fixture(scope="module")
def records() -> list[dict[str, str]]:
    return corpus.generate_stories(2000, seed=0)


def test_same_seed_gives_identical_records() -> None:
    assert corpus.generate_stories(200, seed=7) == corpus.generate_stories(200, seed=7)


def test_different_seed_gives_different_records() -> None:
    assert corpus.generate_stories(200, seed=7) != corpus.generate_stories(200, seed=8)


def test_records_are_prompt_and_story_strings(records: list[dict[str, str]]) -> None:
    for record in records:
        assert set(record) == {"prompt", "story"}
        assert isinstance(record["prompt"], str) and isinstance(record["story"], str)


def test_about_seventy_percent_are_chat_framed(records: list[dict[str, str]]) -> None:
    chat = sum(1 for r in records if r["prompt"]) / len(records)
    assert 0.65 <= chat <= 0.75


def test_chat_stories_are_about_what_was_asked(records: list[dict[str, str]]) -> None:
    # What is left of a request once the template's own words are gone is its subject ("red kite",
    # "mia her dog", "lost key"); every one of those words has to occur in the story.
    template_words = set().union(*(_words(t.replace("{}", "")) for t in corpus.REQUESTS))
    for record in (r for r in records if r["prompt"]):
        subject = _words(record["prompt"]) - template_words
        assert subject, record["prompt"]
        missing = subject - _words(record["story"])
        assert not missing, (record["prompt"], record["story"], missing)


def test_vocabulary_is_rich_but_small() -> None:
    vocabulary = set().union(*(_words(r["story"]) for r in corpus.generate_stories(20000, seed=1)))
    assert 800 <= len(vocabulary) <= 2500


def test_stories_are_short(records: list[dict[str, str]]) -> None:
    for record in records:
        assert 40 <= len(record["story"].split()) <= 200, record["story"]
