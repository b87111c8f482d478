"""Train dgemma-tiny: the DiffusionGemma architecture, scaled down, on the generated story corpus.

The objective is DiffusionGemma's own (block diffusion with uniform-state noise): a prefix (the conversation up to
a model answer, and any earlier canvases of that answer) is encoded causally, and the next canvas, corrupted by
replacing each token with a uniform random one at a random rate, is denoised bidirectionally over the prefix's
keys. Cross-entropy over the canvas. Half of the steps train self-conditioning: a first pass without it, whose
tempered softmax feeds a second pass that carries the loss. The model is the runtime's own `DiffusionGemma`,
over `SequenceKV`.

    python scripts/make_story_corpus.py    # the corpus first (train_tokenizer.py only for a new tokenizer.json)
    python scripts/train_tiny.py --minutes 40                                              # resumes if interrupted
    python scripts/train_tiny.py --device cuda --minutes 6.3 --batch-size 256 --lr 3e-3   # the shipped model
    python scripts/eval_tiny.py --model dgemma_cli/builtin/dgemma-tiny                     # then measure it

The shipped weights come from the third line, from scratch on one H200 (2,700 steps; it shared the GPU with a
second run); two hours on 2 CPU cores at the defaults reach about twice its held-out loss.

Writes config.json, generation_config.json and model.safetensors (bf16) next to tokenizer.json in --out;
the resumable state (weights, optimiser, RNG, progress) lives in --work as safetensors + JSON. Imports the
installed dgemma_runtime (`pip install -e .` in the checkout).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from dgemma_kernels import backend as kernels
from dgemma_runtime import Message, Tokenizer, load, render_chat, render_follow_up
from dgemma_runtime.cache import SequenceKV
from dgemma_runtime.config import parse_config
from dgemma_runtime.model import DiffusionGemma
from dgemma_runtime.tokenizer import CHANNEL_CLOSE, CHANNEL_OPEN, THOUGHT_LABEL
from dgemma_runtime.weights import DECODER, ENCODER_LAYERS
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent  # the checkout: default corpus, work and output folders

CANVAS = 64
SESSION_FRACTION = 0.5  # conversations whose follow-up prefixes are written as a session's cache holds them
GENERIC_REQUESTS = (
    "Tell me a story.",
    "Tell me a bedtime story.",
    "Write a short story.",
    "Can you tell me a story?",
)


def model_config(vocab_size: int) -> dict:
    """config.json of dgemma-tiny: every architectural feature of the 26B model, a few million parameters."""
    return {
        "architectures": ["DiffusionGemmaForBlockDiffusion"],
        "model_type": "diffusion_gemma",
        "canvas_length": CANVAS,
        "tie_word_embeddings": True,
        "eos_token_id": [1, 106, 50],
        "text_config": {
            "model_type": "diffusion_gemma_text",
            "vocab_size": vocab_size,
            "hidden_size": 256,
            "intermediate_size": 512,
            "moe_intermediate_size": 256,
            "num_experts": 4,
            "top_k_experts": 2,
            "num_hidden_layers": 4,
            "layer_types": ["sliding_attention"] * 3 + ["full_attention"],
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "global_head_dim": 128,
            "num_global_key_value_heads": 1,
            "sliding_window": 96,
            "max_position_embeddings": 4096,
            "final_logit_softcapping": 30.0,
            "rms_norm_eps": 1e-6,
            "use_bidirectional_attention": "vision",
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 2,
            "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {
                    "rope_type": "proportional",
                    "partial_rotary_factor": 0.25,
                    "rope_theta": 1e6,
                },
            },
        },
    }


GENERATION_CONFIG = {
    "max_denoising_steps": 32,
    "t_min": 0.4,
    "t_max": 0.8,
    "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.1},
    "stability_threshold": 1,
    "confidence_threshold": 0.005,
    "eos_token_id": [1, 106, 50],
    "pad_token_id": 0,
}


# -- data ----------------------------------------------------------------------------------------------------


def examples(records: list[dict], tokenizer: Tokenizer, seed: int) -> dict[int, list[tuple[list[int], list[int]]]]:
    """(prefix, canvas) pairs, bucketed by prefix length so a batch needs no padding: one pair per canvas of each
    model answer (its thought first when the record thinks), the answer ending with <turn|> and pad after it.

    The loss falls on answers only: everything before one is its prefix. That prefix is the conversation as
    `render_chat` writes it (earlier thoughts dropped), or, for SESSION_FRACTION of the conversations, as a
    `Session`'s cache holds it after the REPL's turns: each earlier answer as the model said it, after its
    generation prompt (the empty thought channel, or the thought itself), then `render_follow_up`. The two differ
    by those tokens; training on both keeps a follow-up working on either path."""
    rng = random.Random(seed)
    turn_close = tokenizer.turn_close
    buckets: dict[int, list[tuple[list[int], list[int]]]] = defaultdict(list)
    for record in records:
        think = "thoughts" in record
        said = [(record["prompt"] or rng.choice(GENERIC_REQUESTS), record["story"])]
        said += [(turn["user"], turn["model"]) for turn in record.get("turns", ())]
        thoughts = record.get("thoughts") or [None] * len(said)
        as_session = len(said) > 1 and rng.random() < SESSION_FRACTION
        history = [Message("system", record["system"])] if record.get("system") else []
        # The history as render_chat writes it (no generation prompt) and its ids, grown turn by turn: each turn
        # encodes only its new text, which starts at a special token, where encoding the whole would split it too.
        rendered, history_ids = "", []
        cache: list[int] = []  # the conversation so far as a session holds it
        for k, ((user, answer), thought) in enumerate(zip(said, thoughts, strict=True)):
            if k and as_session:
                prompt = cache + tokenizer.encode(render_follow_up(user, think=think))
            else:
                chat = render_chat([*history, Message("user", user)], think=think)
                prompt = history_ids + tokenizer.encode(chat[len(rendered) :])
            text = answer if thought is None else f"{CHANNEL_OPEN}{THOUGHT_LABEL}{thought}{CHANNEL_CLOSE}{answer}"
            target = [*tokenizer.encode(text), turn_close]
            cache = prompt + target
            history += [Message("user", user), Message("model", answer)]
            grown = render_chat(history, think=think, add_generation_prompt=False)
            history_ids, rendered = history_ids + tokenizer.encode(grown[len(rendered) :]), grown
            target += [0] * (-len(target) % CANVAS)
            for start in range(0, len(target), CANVAS):
                prefix = prompt + target[:start]
                buckets[len(prefix)].append((prefix, target[start : start + CANVAS]))
    return buckets


def batches(buckets: dict, batch_size: int, rng: random.Random) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches: a bucket, then pairs from it. A bucket smaller than a batch gives a smaller batch, so it is
    drawn as if it held a full one: every pair comes up equally often, the long prefixes of late conversation
    turns (which spread over many small buckets) as much as the short ones."""
    lengths = sorted(buckets)
    weights = [max(len(buckets[n]), batch_size) for n in lengths]
    while True:
        bucket = buckets[rng.choices(lengths, weights)[0]]
        picked = [bucket[rng.randrange(len(bucket))] for _ in range(min(batch_size, len(bucket)))]
        yield torch.tensor([p for p, _ in picked]), torch.tensor([c for _, c in picked])


# -- objective -----------------------------------------------------------------------------------------------


def corrupt(canvas: torch.Tensor, vocab: int, generator: torch.Generator, rate: float | None = None) -> torch.Tensor:
    """Uniform-state noise: each token replaced by a uniform random id, at `rate` or a per-example rate in [0, 1)."""
    device = generator.device
    if rate is None:
        rate = torch.rand(canvas.shape[0], 1, generator=generator, device=device)
    noisy = torch.rand(canvas.shape, generator=generator, device=device) < rate
    return torch.where(noisy, torch.randint(0, vocab, canvas.shape, generator=generator, device=device), canvas)


def canvas_logits(model: DiffusionGemma, prefix: torch.Tensor, noisy: torch.Tensor, sc: torch.Tensor | None):
    kv = SequenceKV(model.config)
    model.encode(prefix, kv)
    return model.decode(noisy, kv, sc)


def loss_on(model: DiffusionGemma, prefix, canvas, generator, self_condition: bool) -> torch.Tensor:
    noisy = corrupt(canvas, model.config.vocab_size, generator)
    sc = None
    if self_condition:
        with torch.no_grad():
            first = canvas_logits(model, prefix, noisy, None)
        temperature = 0.4 + 0.4 * torch.rand((), generator=generator, device=generator.device).item()  # sampler's range
        sc = torch.softmax(first.float() / temperature, dim=-1)
    logits = canvas_logits(model, prefix, noisy, sc)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), canvas.reshape(-1))


# -- state ---------------------------------------------------------------------------------------------------


def init_weights(model: DiffusionGemma, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
            else:
                p.fill_(1.0)  # norms, router scales and layer scalars start as identities


def checkpoint_tensors(model: DiffusionGemma) -> dict[str, torch.Tensor]:
    """Our parameter names -> the Hugging Face checkpoint names (inverse of weights.module_name)."""
    out = {}
    for name, p in model.named_parameters():
        if name.endswith("encoder_scalar"):
            layer = name.split(".")[1]
            out[f"{ENCODER_LAYERS}{layer}.layer_scalar"] = p.detach()
        else:
            out[DECODER + name] = p.detach()
    return out


def save_state(work: Path, model, optimizer, step: int, seconds: float) -> None:
    tensors = {f"model.{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value):
                    tensors[f"optim.{names[id(p)]}.{key}"] = value.cpu().contiguous()
    tmp = work / "state.safetensors.tmp"
    save_file(tensors, tmp)
    tmp.replace(work / "state.safetensors")
    meta = {"step": step, "seconds": seconds}
    (work / "state.json").write_text(json.dumps(meta))


def restore_state(work: Path, model, optimizer) -> tuple[int, float]:
    if not (work / "state.json").exists():
        return 0, 0.0
    tensors = load_file(work / "state.safetensors")
    meta = json.loads((work / "state.json").read_text())
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"model.{name}"])
    for name, p in params.items():
        state = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"optim.{name}.")}
        if state:  # AdamW keeps its step counter on the CPU, the moments beside the parameter
            optimizer.state[p] = {k: v if k == "step" else v.to(p.device) for k, v in state.items()}
    return meta["step"], meta["seconds"]


def export(model: DiffusionGemma, out: Path, vocab_size: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(torch.bfloat16).cpu().contiguous() for k, v in checkpoint_tensors(model).items()}
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(model_config(vocab_size), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")


def sample_answers(out: Path, prompts: list[str]) -> list[str]:
    """Answers from the exported checkpoint, through the real runtime and sampler."""
    engine = load(out, device="cpu", dtype="float32")
    assert engine.tokenizer is not None
    texts = []
    for prompt in prompts:
        ids = engine.tokenizer.chat([Message("user", prompt)])
        result = engine.generate(ids, seed=0, max_new_tokens=256)
        texts.append(engine.tokenizer.decode(result.token_ids))
    return texts


# -- main ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "work_tiny" / "stories.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "dgemma_cli" / "builtin" / "dgemma-tiny")
    parser.add_argument("--work", type=Path, default=ROOT / "work_tiny")
    parser.add_argument("--minutes", type=float, default=40.0, help="total training time, resumes included")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on either)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-every", type=int, default=50)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    kernels.enabled = False  # training needs PyTorch's ops: the GPU kernels compute forward passes only
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(args.out / "tokenizer.json")
    vocab_size = math.ceil(tokenizer.vocab_size / 64) * 64
    records = [json.loads(line) for line in args.corpus.read_text().splitlines()]
    held_out = records[-500:]  # never trained on: the quality test draws its prompts from the same generator
    buckets = examples(records[:-500], tokenizer, args.seed)

    torch.manual_seed(args.seed)
    config = parse_config(model_config(vocab_size))
    model = DiffusionGemma(config)
    init_weights(model, args.seed)
    device = torch.device(args.device)
    model.to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    step, spent = restore_state(args.work, model, optimizer)
    # Data order and noise follow from (seed, step): a run resumed at step s continues deterministically.
    rng = random.Random(args.seed * 1_000_003 + step)
    gen = torch.Generator(device).manual_seed(args.seed * 1_000_003 + step)
    budget = args.minutes * 60
    print(
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocab {vocab_size}, "
        f"{sum(len(b) for b in buckets.values())} canvases, starting at step {step}",
        flush=True,
    )

    stream = batches(buckets, args.batch_size, rng)
    losses: list[float] = []
    start = time.perf_counter() - spent
    while time.perf_counter() - start < budget:
        progress = (time.perf_counter() - start) / budget
        lr = args.lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        prefix, canvas = (t.to(device) for t in next(stream))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_on(model, prefix, canvas, gen, self_condition=step % 2 == 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % args.report_every == 0:
            elapsed = time.perf_counter() - start
            print(
                f"step {step:6d}  loss {sum(losses) / len(losses):.3f}  lr {lr:.2e}  {elapsed / 60:5.1f} min",
                flush=True,
            )
            losses.clear()
        if step % (args.report_every * 10) == 0:
            save_state(args.work, model, optimizer, step, time.perf_counter() - start)
            export(model, args.out, vocab_size)
            print("  sample:", sample_answers(args.out, [held_out[0]["prompt"] or "Tell me a story."])[0][:300])
    save_state(args.work, model, optimizer, step, time.perf_counter() - start)
    export(model, args.out, vocab_size)
    for prompt, text in zip(
        ["Tell me a story about a brave little boat.", "Tell me a story about a red kite."],
        sample_answers(args.out, ["Tell me a story about a brave little boat.", "Tell me a story about a red kite."]),
        strict=True,
    ):
        print(f"\n> {prompt}\n{text}")


if __name__ == "__main__":
    main()
