"""Train the dgemma-tiny byte-level BPE tokenizer on the story corpus.

Special tokens sit at the same ids as in the real DiffusionGemma (Gemma 4) tokenizer, so code that
hard-codes <bos>, <mask> or the chat-turn markers works unchanged on dgemma-tiny. Every other id below
108 holds an <unused_N> placeholder; learned tokens start at 108.

    python scripts/train_tokenizer.py --corpus work_tiny/stories.jsonl \\
        --out dgemma_cli/builtin/dgemma-tiny/tokenizer.json
"""

import argparse
import json
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_IDS = {
    0: "<pad>",
    1: "<eos>",
    2: "<bos>",
    3: "<unk>",
    4: "<mask>",
    46: "<|tool>",
    47: "<tool|>",
    48: "<|tool_call>",
    49: "<tool_call|>",
    50: "<|tool_response>",
    51: "<tool_response|>",
    52: '<|"|>',
    98: "<|think|>",
    100: "<|channel>",
    101: "<channel|>",
    105: "<|turn>",
    106: "<turn|>",
}
RESERVED_IDS = 108
MIN_VOCAB = 2000
SPECIAL_PATTERN = re.compile("|".join(re.escape(t) for t in SPECIAL_IDS.values()))
ROUND_TRIP_EXTRAS = ("café ☕ 日本", "Tabs\tand\nnewlines  and  double spaces.", "<|turn>user\nHi!<turn|>")


def special_tokens() -> list[str]:
    """All reserved tokens in id order, so the trainer gives token i the id i."""
    return [SPECIAL_IDS.get(i, f"<unused_{i}>") for i in range(RESERVED_IDS)]


def chat_text(prompt: str, story: str) -> str:
    """A record in the chat format the runtime feeds the model, with an empty thought channel."""
    return f"<bos><|turn>user\n{prompt}<turn|>\n<|turn>model\n<|channel>thought\n<channel|>{story}<turn|>"


def training_texts(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    # The trainer does not split off special tokens itself; encode() does. Splitting here makes the
    # trainer see the same pieces encode() will (and learns no merges for the markers' own characters).
    for record in records:
        text = chat_text(record["prompt"], record["story"]) if record["prompt"] else record["story"]
        yield from (piece for piece in SPECIAL_PATTERN.split(text) if piece)
        # A conversation's later turns and thoughts: text between markers too, so they come as plain pieces.
        yield from (said for turn in record.get("turns", ()) for said in (turn["user"], turn["model"]))
        yield from record.get("thoughts", ())


def train(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, so any text round-trips
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def check(tokenizer: Tokenizer, stories: list[str], vocab_size: int) -> None:
    for token_id, token in enumerate(special_tokens()):
        assert tokenizer.token_to_id(token) == token_id, (token, tokenizer.token_to_id(token))
    added = tokenizer.get_added_tokens_decoder()
    assert all(added[i].special for i in range(RESERVED_IDS)), "reserved tokens must be special"
    assert MIN_VOCAB <= tokenizer.get_vocab_size() <= vocab_size, tokenizer.get_vocab_size()
    for text in (*stories, *ROUND_TRIP_EXTRAS):
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text, text
    marked = tokenizer.encode("<bos><|turn>model\n").ids
    assert marked[:2] == [2, 105], marked  # special tokens are matched inside text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("work_tiny/stories.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("dgemma_cli/builtin/dgemma-tiny/tokenizer.json"))
    parser.add_argument("--vocab-size", type=int, default=4096, help="total, special tokens included")
    args = parser.parse_args()

    start = time.perf_counter()
    with args.corpus.open(encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    tokenizer = train(training_texts(records), args.vocab_size)
    stories = [r["story"] for r in records]
    check(tokenizer, stories[:50], args.vocab_size)  # before saving, so a broken tokenizer never lands

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(args.out))
    lengths = [len(e.ids) for e in tokenizer.encode_batch(stories)]
    print(
        f"vocab size {tokenizer.get_vocab_size()}, {sum(lengths) / len(lengths):.1f} tokens per story "
        f"({len(records)} stories), saved to {args.out} in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    main()
