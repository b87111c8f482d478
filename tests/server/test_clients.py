"""The official `ollama` and `openai` Python clients against `dgemma serve`: chat, generate, streaming or not,
model listing; and the same seed gives the answer `dgemma run` gives."""

from __future__ import annotations

import ollama
import openai
import pytest

from tests.support.cli import FAST, PROMPT, dgemma, ok

LENGTH = int(FAST[1])  # the --max-new-tokens of `dgemma run`: two canvases of the 16-token test model


@pytest.fixture(scope="module")
def ollama_client(server) -> ollama.Client:
    return ollama.Client(host=server.url)


@pytest.fixture(scope="module")
def openai_client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def run_answer(serve_env) -> str:
    """What `dgemma run tiny PROMPT --seed 1` prints when piped."""
    return ok(dgemma(serve_env, "run", "tiny", PROMPT, *FAST, "--seed", "1")).stdout.strip()


def test_seeded_answers_are_the_ones_dgemma_run_gives(ollama_client, openai_client, run_answer):
    assert run_answer
    options = {"seed": 1, "num_predict": LENGTH}
    generated = ollama_client.generate(model="tiny", prompt=PROMPT, options=options)
    chatted = ollama_client.chat(model="tiny", messages=[{"role": "user", "content": PROMPT}], options=options)
    completed = openai_client.completions.create(model="tiny", prompt=PROMPT, max_tokens=LENGTH, seed=1)
    chat = openai_client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": PROMPT}], max_tokens=LENGTH, seed=1
    )
    assert generated.response.strip() == run_answer
    assert chatted.message.content.strip() == run_answer
    assert completed.choices[0].text.strip() == run_answer
    assert chat.choices[0].message.content.strip() == run_answer


def test_ollama_generate_streams_one_chunk_per_canvas_then_statistics(ollama_client):
    options = {"seed": 1, "num_predict": LENGTH}
    whole = ollama_client.generate(model="tiny", prompt=PROMPT, options=options)
    parts = list(ollama_client.generate(model="tiny", prompt=PROMPT, options=options, stream=True))
    *canvases, last = parts
    assert len(canvases) == 2 and not any(p.done for p in canvases)
    assert "".join(p.response for p in parts) == whole.response
    assert last.done and last.response == "" and last.done_reason == whole.done_reason == "length"
    for answer in (last, whole):
        assert answer.eval_count == LENGTH
        assert answer.prompt_eval_count > 0
        assert answer.total_duration >= answer.eval_duration > 0
        assert answer.prompt_eval_duration > 0 and answer.load_duration >= 0


def test_ollama_chat_streams_and_answers_whole(ollama_client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    options = {"seed": 3, "steps": 4, "t_max": 0.9, "entropy_bound": 0.2, "num_predict": LENGTH}
    whole = ollama_client.chat(model="tiny", messages=messages, options=options)
    parts = list(ollama_client.chat(model="tiny:latest", messages=messages, options=options, stream=True))
    assert whole.message.role == "assistant" and whole.message.content
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].done and parts[-1].eval_count == whole.eval_count


def test_openai_chat_streams_deltas_and_usage(openai_client):
    messages = [{"role": "user", "content": PROMPT}]
    whole = openai_client.chat.completions.create(model="tiny", messages=messages, max_tokens=LENGTH, seed=4)
    stream = openai_client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=LENGTH,
        seed=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert 0 < chunks[-1].usage.completion_tokens == whole.usage.completion_tokens <= LENGTH
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens


def test_openai_extra_diffusion_fields_are_used(openai_client):
    def answer(**extra) -> str:
        return (
            openai_client.completions.create(model="tiny", prompt=PROMPT, max_tokens=LENGTH, seed=5, extra_body=extra)
            .choices[0]
            .text
        )

    assert answer(steps=2) != answer(steps=8)
    assert answer(steps=8) == answer()  # the checkpoint's own default


def test_model_listing_show_ps_and_version(ollama_client, openai_client, server):
    names = [m.model for m in ollama_client.list().models]
    assert "tiny:latest" in names
    assert "tiny:latest" in [m.id for m in openai_client.models.list()]
    shown = ollama_client.show("tiny")
    assert shown.modelinfo["general.architecture"] == "diffusion_gemma"
    assert shown.modelinfo["diffusion_gemma.canvas_length"] == 16
    assert "max_denoising_steps 8" in shown.parameters
    ollama_client.generate(model="tiny", prompt=PROMPT, options={"num_predict": 16})
    assert [m.model for m in ollama_client.ps().models] == ["tiny:latest"]
    assert server.http.get("/api/version").json()["version"]
