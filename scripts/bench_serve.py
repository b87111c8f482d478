"""Throughput of `dgemma serve` with concurrent clients against the same requests one after another.

    python scripts/bench_serve.py [--model dgemma-tiny] [--clients 4] [--max-new-tokens 256] [--url URL]

Starts `dgemma serve --port 0` on 127.0.0.1 (unless --url names a running server), loads the model with one
warm-up request, then sends N identical prompts (the worker may batch them; no seed, so each
gets its own answer) first one after another, then all at once. Prints both wall times, the generated tokens and
the ratio. Answers end at their own EOS, so tokens per second is the fairer comparison of the two.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

PROMPT = "Tell me a story about a brave little boat."


def start_server(model: str) -> tuple[subprocess.Popen, str]:
    log = Path(tempfile.mkdtemp()) / "serve.log"
    dgemma = shutil.which("dgemma", path=str(Path(sys.executable).parent)) or "dgemma"
    with log.open("w") as err:
        process = subprocess.Popen([dgemma, "serve", "--port", "0", "--model", model], stdout=err, stderr=err)
    deadline = time.monotonic() + 120
    while not (found := re.search(r"on (http://\S+)", log.read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"dgemma serve did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return process, found.group(1)


def generate(client: httpx.Client, model: str, max_new_tokens: int) -> int:
    body = {"model": model, "prompt": PROMPT, "stream": False, "options": {"num_predict": max_new_tokens}}
    response = client.post("/api/generate", json=body)
    response.raise_for_status()
    return response.json()["eval_count"]


def timed(run) -> tuple[float, int]:
    started = time.perf_counter()
    tokens = run()
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dgemma-tiny")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--url", help="a running dgemma serve (default: start one)")
    args = parser.parse_args()

    process, url = (None, args.url) if args.url else start_server(args.model)
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            generate(client, args.model, args.max_new_tokens)  # warm-up: the model loads, caches fill

            def one() -> int:
                return generate(client, args.model, args.max_new_tokens)

            sequential = timed(lambda: sum(one() for _ in range(args.clients)))
            before = client.get("/api/ps").json()["dgemma"]["batches"]
            with ThreadPoolExecutor(args.clients) as pool:
                concurrent = timed(lambda: sum(pool.map(lambda _: one(), range(args.clients))))
            batches = client.get("/api/ps").json()["dgemma"]["batches"] - before
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)

    for label, (seconds, tokens) in (("one after another", sequential), ("concurrent", concurrent)):
        print(f"{label:18s} {seconds:7.2f} s  {tokens:6d} tokens  {tokens / seconds:8.1f} tok/s")
    (seq_s, seq_t), (con_s, con_t) = sequential, concurrent
    print(f"{args.clients} clients ran as {batches} batch(es)")
    print(f"wall-time ratio (sequential / concurrent): {seq_s / con_s:.2f}x")
    print(f"throughput ratio (concurrent / sequential tok/s): {(con_t / con_s) / (seq_t / seq_s):.2f}x")


if __name__ == "__main__":
    main()
