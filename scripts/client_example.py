"""A chat client for any OpenAI-compatible server: `dgemma serve` on one machine, or a multi-GPU server such as
vLLM once you outgrow it. Only the base URL (and the model's name) changes.

    python scripts/client_example.py --base-url http://127.0.0.1:11435/v1 --model dgemma-tiny  # dgemma serve
    python scripts/client_example.py --base-url http://gpu-host:8000/v1                        # vLLM

Streams the answer to stdout as it arrives. Without --model it asks the server for its first model (vLLM serves
one). A server that wants a key (vLLM's --api-key, dgemma's DGEMMA_API_KEY) gets OPENAI_API_KEY; a loopback
`dgemma serve` wants none. It sends only standard fields, none of dgemma's extensions, so either server takes it.
"""

from __future__ import annotations

import argparse
import os

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="the server's OpenAI API, e.g. http://127.0.0.1:11435/v1")
    parser.add_argument("--model", help="the model's name on that server (default: the first it lists)")
    parser.add_argument("--prompt", default="Tell me a story about a brave little boat.")
    parser.add_argument("--max-tokens", type=int, default=512)
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY") or "unused")
    model = args.model or client.models.list().data[0].id
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": args.prompt}],
        max_tokens=args.max_tokens,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:  # the last chunk may carry only usage
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
