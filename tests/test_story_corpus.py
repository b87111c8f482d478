"""The dgemma-tiny story corpus: deterministic, mostly chat-framed, on topic, with conversations whose answers are
right by construction, short plans for thinking, and phrasings and subjects kept back for evaluation."""

import random
import re

import pytest

from tests.support.scripts import script

corpus = script("make_story_corpus")
NAMES = set(corpus.GIRL_NAMES + corpus.BOY_NAMES + corpus.CRITTER_NAMES)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def _pattern(template: str) -> re.Pattern[str]:
    """A template ("Now one about {}.", "What was the {noun} called?") as a regex whose groups are its slots."""
    parts = re.split(r"\{[a-zA-Z_]*\}", template)
    return re.compile("(.+?)".join(re.escape(p) for p in parts) + "$")


def _subject(text: str, templates: tuple[str, ...]) -> str | None:
    """What fills the slot of the first template the text matches, or None."""
    for template in templates:
        match = _pattern(template).match(text)
        if match:
            return match.group(1) if match.groups() else ""
    return None


def _exchanges(record: dict) -> list[tuple[str, str]]:
    return [(record["prompt"], record["story"]), *((t["user"], t["model"]) for t in record.get("turns", ()))]


QUESTION_TEMPLATES = {kind: tuple(q for q, _ in pairs) for kind, pairs in corpus.QUESTIONS.items()}
ALL_QUESTIONS = tuple(q for questions in QUESTION_TEMPLATES.values() for q in questions)


def _is_question(user: str) -> bool:
    return _subject(user, ALL_QUESTIONS) is not None


def _first_name(story: str) -> str:
    return next(w for w in re.findall(r"[A-Z][a-z]+", story) if w in NAMES)


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return corpus.generate_stories(3000, seed=0)


def test_same_seed_gives_identical_records() -> None:
    assert corpus.generate_stories(200, seed=7) == corpus.generate_stories(200, seed=7)


def test_different_seed_gives_different_records() -> None:
    assert corpus.generate_stories(200, seed=7) != corpus.generate_stories(200, seed=8)


def test_records_hold_strings_in_the_documented_shape(records: list[dict]) -> None:
    for record in records:
        assert set(record) <= {"prompt", "story", "system", "turns", "thoughts"}, record.keys()
        assert isinstance(record["prompt"], str) and record["story"]
        assert record.get("system", "x") in (*corpus.SYSTEM_PROMPTS, "x")
        for turn in record.get("turns", ()):
            assert set(turn) == {"user", "model"} and turn["user"] and turn["model"]
        if "thoughts" in record:
            assert len(record["thoughts"]) == len(_exchanges(record))


def test_the_mix_of_records(records: list[dict]) -> None:
    n = len(records)
    assert 0.65 <= sum(1 for r in records if r["prompt"]) / n <= 0.75  # the rest take a generic request
    conversations = [r for r in records if "turns" in r]
    assert 0.35 <= len(conversations) / n <= 0.45
    assert {len(r["turns"]) + 1 for r in conversations} == {2, 3, 4}
    assert 0.15 <= sum(1 for r in records if "thoughts" in r) / n <= 0.25
    assert 0.15 <= sum(1 for r in records if "system" in r) / n <= 0.25
    users = [u for r in conversations for u, _ in _exchanges(r)[1:]]
    questions = sum(map(_is_question, users))
    assert 0.35 <= questions / len(users) <= 0.65  # about as many questions as follow-up requests


def test_stories_are_about_what_was_asked(records: list[dict]) -> None:
    # What is left of a request once its template's own words are gone is its subject ("red kite", "mia her dog",
    # "lost key", "bear"); every one of those words has to occur in the story told for it.
    checked = 0
    for record in records:
        for k, (user, story) in enumerate(_exchanges(record)):
            templates = corpus.REQUESTS if k == 0 else corpus.FOLLOW_UPS["new"] + corpus.FOLLOW_UPS["instead"]
            subject = _subject(user, templates)
            if not subject:
                continue
            missing = _words(subject) - _words(story) - {"a", "an"}  # "an elephant" may be "a little elephant"
            assert not missing, (user, story, missing)
            checked += 1
    assert checked > 2000


def test_the_hero_is_the_subject_asked_for(records: list[dict]) -> None:
    """ "...about a tiger." gets a story whose first sentence introduces a tiger: the hero, not a passer-by."""
    nouns = {corpus.article(kind.noun): kind.noun for kind in corpus.HEROES}
    checked = 0
    for record in records:
        for k, (user, story) in enumerate(_exchanges(record)):
            templates = corpus.REQUESTS if k == 0 else corpus.FOLLOW_UPS["new"] + corpus.FOLLOW_UPS["instead"]
            noun = nouns.get(_subject(user, templates) or "")
            if noun:
                first_sentence = story.split(". ")[0]
                assert re.search(rf"\b{noun}\b", first_sentence), (user, story)
                checked += 1
    assert checked > 300


def test_every_hero_noun_can_star_in_a_story() -> None:
    rng = random.Random(3)
    assert len(corpus.HEROES) >= 250 and len({k.noun for k in corpus.HEROES}) == len(corpus.HEROES)
    for kind in corpus.HEROES:
        for _ in range(3):
            story = corpus.tell(rng, corpus.make_hero(rng, kind))
            named_only = story.hero.intro == story.hero.name  # "Mia lived...": a child may be introduced by name
            assert named_only or re.search(rf"\b{kind.noun}\b", story.text.split(". ")[0]), story.text
            assert 40 <= len(story.text.split()) <= 200
    assert not {k.noun for k in corpus.HELD_OUT_KINDS} & {k.noun for k in corpus.HEROES}


def test_answers_to_questions_come_from_the_story_just_told(records: list[dict]) -> None:
    endings = ("In the end, ", "At the end of the story, ")
    checked = {kind: 0 for kind in corpus.QUESTIONS}
    for record in records:
        story = record["story"]
        for user, answer in _exchanges(record)[1:]:
            kind = next((k for k, qs in QUESTION_TEMPLATES.items() if _subject(user, qs) is not None), None)
            if kind is None:
                story = answer  # a follow-up told a new story: the next question is about that one
                continue
            checked[kind] += 1
            assert {w for w in re.findall(r"[A-Z][a-z]+", answer) if w in NAMES} <= set(re.findall(r"\w+", story))
            if kind == "name":
                assert _first_name(story) in answer, (story, user, answer)
            elif kind == "home":
                home = re.split(r" lived | home was ", answer)[1].rstrip(".")
                assert f"lived {home}" in story, (story, answer)
            elif kind == "end":
                ending = next(answer.removeprefix(p) for p in endings if answer.startswith(p))
                assert ending.lower() in story.lower(), (story, answer)
            elif kind == "friend":
                met = re.split(r" met |friend was ", answer)[1].rstrip(".")
                assert met in story, (story, answer)
    assert min(checked.values()) > 50, checked


def test_thoughts_are_short_plans_that_the_answer_keeps(records: list[dict]) -> None:
    thinking = [r for r in records if "thoughts" in r]
    for record in thinking:
        for (user, answer), thought in zip(_exchanges(record), record["thoughts"], strict=True):
            assert 1 <= thought.count(". ") + 1 <= 2 and thought.endswith("."), thought
            assert len(thought.split()) <= 40, thought
            if _is_question(user):
                continue
            assert _first_name(answer) in thought, (thought, answer)  # the plan names the hero the story has
            met = re.search(r"let \w+ meet (an? [a-z ]+)\.", thought)
            if met:  # a plan to meet someone is kept
                assert met.group(1).split(" ", 1)[1] in answer, (thought, answer)
    assert len(thinking) > 300


def test_held_out_phrasings_and_subjects_never_occur(records: list[dict]) -> None:
    held_out = (
        *corpus.HELD_OUT_REQUESTS,
        *(t for ts in corpus.HELD_OUT_FOLLOW_UPS.values() for t in ts),
        *corpus.HELD_OUT_NAME_QUESTIONS,
    )
    nouns = {k.noun for k in corpus.HELD_OUT_KINDS}
    for record in records:
        for user, answer in _exchanges(record):
            assert _subject(user, held_out) is None, user
            assert not nouns & _words(user + " " + answer)
        assert not nouns & _words(" ".join(record.get("thoughts", ())))


def test_vocabulary_is_rich_but_small() -> None:
    vocabulary = set().union(*(_words(r["story"]) for r in corpus.generate_stories(20000, seed=1)))
    assert 1000 <= len(vocabulary) <= 2500


def test_stories_are_short(records: list[dict]) -> None:
    for record in records:
        for user, answer in _exchanges(record):
            if not _is_question(user):
                assert 40 <= len(answer.split()) <= 200, answer
