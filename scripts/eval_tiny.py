"""Measure dgemma-tiny on conversations, with phrasings and seeds the training corpus never used.

(a) follow-up: after a first story, a follow-up request ("How about one about a bear now?") gets a non-empty
    answer that ends with an end-of-turn token, through a Session (only the new tokens are encoded: the REPL's
    path) and through re-encoding the whole conversation (the server's path); and that answer names the new
    subject where the request named one;
(b) name: asked for the hero's name right after that story, the answer (ended by an end-of-turn token) holds the
    name the story introduced;
(c) on topic: a request for a subject the corpus knows gets a story that names it; for reference, the same for
    subjects the corpus never had;
(d) thinking: with thinking on, the model writes a non-empty thought, then a non-empty answer that ends with an
    end-of-turn token, with no special token or broken character in either.
Targets: (b) and (c) at 90% or more.

    python scripts/eval_tiny.py --model dgemma_cli/builtin/dgemma-tiny --n 50 [--seed 1] [--json]

Imports the installed dgemma_runtime and the corpus generator beside this file (for its held-out phrasings and
subjects, and the names its stories use).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from dgemma_runtime import Message, Tokenizer, load, render_follow_up
from dgemma_runtime.tokenizer import THOUGHT_LABEL

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/ is not a package
import make_story_corpus as corpus

NAMES = frozenset((*corpus.GIRL_NAMES, *corpus.BOY_NAMES, *corpus.CRITTER_NAMES))
MAX_NEW_TOKENS = 256  # four canvases of 64: a corpus story takes two or three
CONTEXT = 2048  # a session's room: three prompts and three answers
TARGET = 0.9
# Each figure's label and target (None: reported only).
FIGURES = {
    "follow_up_session": ("(a) follow-up answered, session", None),
    "follow_up_reencoded": ("(a) follow-up answered, re-encoded", None),
    "follow_up_on_topic_session": ("    follow-up on topic, session", None),
    "follow_up_on_topic_reencoded": ("    follow-up on topic, re-encoded", None),
    "name_session": ("(b) hero's name recalled, session", TARGET),
    "name_reencoded": ("(b) hero's name recalled, re-encoded", TARGET),
    "on_topic": ("(c) on topic, subjects it knows", TARGET),
    "on_topic_unseen": ("    on topic, subjects it never saw", None),
    "thinking": ("(d) thought, then a clean answer", None),
}
KNOWN_KINDS = [k for k in corpus.HEROES if k.noun not in ("girl", "boy")]  # "the girl" in a question is ambiguous


@dataclass(frozen=True)
class Item:
    """One conversation and two single prompts, all from held-out phrasings."""

    first: str  # the opening request
    follow_up: str
    follow_noun: str  # the subject the follow-up story should be about
    names_subject: bool  # the follow-up named it ("another one" does not)
    question: str  # about the follow-up story's hero
    known: str  # (c): a request for a subject the corpus knows
    known_noun: str
    unseen: str  # (c), for reference: a subject it never had
    unseen_noun: str
    thinking: str  # (d)
    seed: int


@dataclass(frozen=True)
class Reply:
    answer: str
    thought: str | None  # None: the model opened no thought channel
    ended: bool  # closed by an end-of-turn token
    clean: bool  # no special token and no broken character in the thought or the answer


def items(n: int, seed: int) -> list[Item]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        first, follow, known = (rng.choice(KNOWN_KINDS) for _ in range(3))
        how = rng.choice(sorted(corpus.HELD_OUT_FOLLOW_UPS))
        follow_noun = first.noun if how == "another" else follow.noun
        unseen = rng.choice(corpus.HELD_OUT_KINDS)
        out.append(
            Item(
                first=rng.choice(corpus.HELD_OUT_REQUESTS).format(corpus.article(first.noun)),
                follow_up=rng.choice(corpus.HELD_OUT_FOLLOW_UPS[how]).format(corpus.article(follow.noun)),
                follow_noun=follow_noun,
                names_subject=how != "another",
                question=rng.choice(corpus.HELD_OUT_NAME_QUESTIONS).format(noun=follow_noun),
                known=rng.choice(corpus.HELD_OUT_REQUESTS).format(corpus.article(known.noun)),
                known_noun=known.noun,
                unseen=rng.choice(corpus.HELD_OUT_REQUESTS).format(corpus.article(unseen.noun)),
                unseen_noun=unseen.noun,
                thinking=rng.choice(corpus.HELD_OUT_REQUESTS).format(corpus.article(rng.choice(KNOWN_KINDS).noun)),
                seed=seed * 1_000_003 + i,
            )
        )
    return out


def special_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """Ids that decode to nothing once special tokens are skipped: markers, padding, placeholders."""
    return frozenset(
        i
        for i in range(tokenizer.vocab_size)
        if tokenizer.decode([i]) == "" and tokenizer.decode([i], skip_special_tokens=False) != ""
    )


def read(ids: list[int], tokenizer: Tokenizer, eos: frozenset[int], specials: frozenset[int]) -> Reply:
    """Split generated ids into the thought (if the model opened its channel first) and the answer."""
    ended = bool(ids) and ids[-1] in eos
    body = ids[:-1] if ended else ids
    thought = None
    if body and body[0] == tokenizer.channel_open and tokenizer.channel_close in body:
        close = body.index(tokenizer.channel_close)
        thought_ids, body = body[1:close], body[close + 1 :]
        thought = tokenizer.decode(thought_ids).removeprefix(THOUGHT_LABEL).strip()
    else:
        thought_ids = []
    answer = tokenizer.decode(body).strip()
    broken = "\ufffd" in answer or "\ufffd" in (thought or "")
    clean = not broken and not specials.intersection(body) and not specials.intersection(thought_ids)
    return Reply(answer, thought, ended, clean)


def mentions(text: str, noun: str) -> bool:
    """The noun (or its plural) as whole words of the text."""
    return re.search(rf"\b{re.escape(noun)}(s|es)?\b", text, re.IGNORECASE) is not None


def hero_name(story: str) -> str | None:
    """The first name from the corpus's lists: the stories introduce their hero first."""
    return next((word for word in re.findall(r"[A-Z][a-z]+", story) if word in NAMES), None)


class Evaluator:
    def __init__(self, engine: Any, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        if engine.tokenizer is None:
            raise SystemExit("the model folder has no tokenizer.json")
        self.engine, self.tok = engine, engine.tokenizer
        self.eos = frozenset(engine.defaults.eos_token_ids)
        self.specials = special_ids(self.tok)
        self.max_new_tokens = max_new_tokens

    def reply(self, ids: list[int], seed: int, session: Any = None) -> Reply:
        result = self.engine.generate(ids, session=session, seed=seed, max_new_tokens=self.max_new_tokens)
        return read(result.token_ids, self.tok, self.eos, self.specials)

    def conversation(self, item: Item) -> dict[str, Any]:
        """Story, follow-up, name question: through one session, then re-encoded turn by turn (both paths share the
        first answer and use the same seeds)."""
        session = self.engine.new_session(CONTEXT)
        first = self.reply(self.tok.chat([Message("user", item.first)]), item.seed, session)
        path = {}
        for text in (item.follow_up, item.question):
            prompt = self.tok.encode(render_follow_up(text, closed=session.closed))
            path[text] = self.reply(prompt, item.seed + len(path) + 1, session)
        history = [Message("user", item.first), Message("model", first.answer)]
        again = {}
        for text in (item.follow_up, item.question):
            history.append(Message("user", text))
            again[text] = self.reply(self.tok.chat(history), item.seed + len(again) + 1)
            history.append(Message("model", again[text].answer))
        out: dict[str, Any] = {"first": first.answer}
        for label, replies in (("session", path), ("reencoded", again)):
            story, answer = replies[item.follow_up], replies[item.question]
            name = hero_name(story.answer)
            out[label] = {
                "follow_up": story.answer,
                "answered": bool(story.answer) and story.ended,
                "on_topic": mentions(story.answer, item.follow_noun),
                "name": name,
                "reply": answer.answer,
                "named": answer.ended and name is not None and re.search(rf"\b{name}\b", answer.answer) is not None,
            }
        return out

    def evaluate(self, n: int, seed: int) -> dict[str, Any]:
        """Each figure as a fraction of the items it applies to, and two sample conversations."""
        start = time.perf_counter()
        passed: dict[str, int] = dict.fromkeys(FIGURES, 0)
        asked: dict[str, int] = dict.fromkeys(FIGURES, 0)
        samples = []
        for item in items(n, seed):
            talk = self.conversation(item)
            known = self.reply(self.tok.chat([Message("user", item.known)]), item.seed)
            unseen = self.reply(self.tok.chat([Message("user", item.unseen)]), item.seed)
            thinking = self.reply(self.tok.chat([Message("user", item.thinking)], think=True), item.seed)
            results = {
                "on_topic": mentions(known.answer, item.known_noun),
                "on_topic_unseen": mentions(unseen.answer, item.unseen_noun),
                "thinking": bool(thinking.thought and thinking.answer and thinking.ended and thinking.clean),
            }
            for path in ("session", "reencoded"):
                results[f"follow_up_{path}"] = talk[path]["answered"]
                results[f"name_{path}"] = talk[path]["named"]
                if item.names_subject:  # "One more, please." names none
                    results[f"follow_up_on_topic_{path}"] = talk[path]["on_topic"]
            for key, ok in results.items():
                passed[key] += ok
                asked[key] += 1
            if len(samples) < 2:
                samples.append(
                    {"prompts": [item.first, item.follow_up, item.question], **talk, "thinking": asdict(thinking)}
                )
        return {
            **{key: passed[key] / max(1, asked[key]) for key in FIGURES},
            "n": n,
            "seed": seed,
            "seconds": round(time.perf_counter() - start, 1),
            "samples": samples,
        }


def report(figures: dict[str, Any]) -> str:
    lines = [f"{figures['n']} conversations, seed {figures['seed']}, {figures['seconds']} s"]
    for key, (label, target) in FIGURES.items():
        mark = "" if target is None else ("  ok" if figures[key] >= target else f"  below {target:.0%}")
        lines.append(f"{label:40s}{figures[key]:7.1%}{mark}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model folder (dgemma_cli/builtin/dgemma-tiny)")
    parser.add_argument("--n", type=int, default=50, help="conversations (each also asks three single prompts)")
    parser.add_argument("--seed", type=int, default=1, help="picks prompts and sampling seeds; the corpus uses 0")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--json", action="store_true", help="print the figures and two sample talks as JSON (the table goes to stderr)"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    engine = load(args.model, device=args.device)  # float32 on the CPU, bfloat16 on a GPU: as `dgemma run` runs it
    figures = Evaluator(engine).evaluate(args.n, args.seed)
    if args.json:
        print(json.dumps(figures, indent=1))
    print(report(figures), file=sys.stderr if args.json else sys.stdout)


if __name__ == "__main__":
    main()
