"""Images over HTTP: Ollama's base64 `images` and OpenAI's data-URL `image_url` parts give the ids the runtime
gives in process; bad base64, bad images, remote URLs and images for a text-only model are a 400 naming the
problem; /api/show lists the vision capability; and the worker runs a request with images alone."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from pathlib import Path
from types import SimpleNamespace

import dgemma_runtime
import pytest
import torch
from dgemma_runtime import CanvasEvent, FinalEvent, GenerationDefaults, GenerationStats, Message, PreparedPrompt

from dgemma_cli.models import store
from dgemma_cli.serve.worker import Finished, Job, Worker
from tests.support.checkpoints import write_vision_checkpoint
from tests.support.cli import needs_builtin, store_model
from tests.test_images import BAD, noise

SEED, LENGTH = 3, 32
TEXT = "Describe it."


@pytest.fixture(scope="module")
def eyes(tmp_path_factory, serve_env) -> Path:
    """A random chat model with a vision tower, stored as 'eyes' in the servers' store."""
    folder = write_vision_checkpoint(tmp_path_factory.mktemp("eyes"))
    store_model(serve_env, "eyes", folder)
    return folder


@pytest.fixture(scope="module")
def server(start_server, eyes):
    return start_server()


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("picture") / "pic.png"
    noise("RGB", (37, 23), 1).save(path)
    return path


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def data_url(path: Path) -> str:
    return f"data:image/png;base64,{b64(path)}"


@pytest.fixture(scope="module")
def expected(eyes, picture) -> tuple[list[int], int]:
    """What the runtime answers in process: the generated ids and the prompt's length."""
    engine = dgemma_runtime.load(eyes, device="cpu", dtype="float32")
    prompt = engine.prepare([Message("user", TEXT, (picture,))])
    return engine.generate(prompt, seed=SEED, max_new_tokens=LENGTH).token_ids, len(prompt.ids)


def requests(picture: Path) -> dict[str, dict]:
    ollama = {"model": "eyes", "stream": True, "frames": True, "options": {"seed": SEED, "num_predict": LENGTH}}
    # The image part after the text: it is shown before the text all the same, as Gemma's template puts it.
    parts = [{"type": "text", "text": TEXT}, {"type": "image_url", "image_url": {"url": data_url(picture)}}]
    openai = {"model": "eyes", "stream": True, "frames": True, "seed": SEED, "max_tokens": LENGTH}
    openai |= {"messages": [{"role": "user", "content": parts}], "stream_options": {"include_usage": True}}
    return {
        "/api/generate": ollama | {"prompt": TEXT, "images": [b64(picture)]},
        "/api/chat": ollama | {"messages": [{"role": "user", "content": TEXT, "images": [b64(picture)]}]},
        "/v1/chat/completions": openai,
    }


def streamed(server, path: str, body: dict) -> list[dict]:
    with server.http.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    return [json.loads(line) for line in lines if line != "[DONE]"]


def generated(chunks: list[dict], eos: tuple[int, ...]) -> list[int]:
    """The answer's ids from the step frames: each canvas's last step, cut after its first end of turn."""
    canvases: dict[int, list[int]] = {}
    for chunk in chunks:
        if chunk.get("type") == "step":
            canvases[chunk["canvas"]] = chunk["ids"]
    cut = [canvases[c][: next((i + 1 for i, t in enumerate(canvases[c]) if t in eos), None)] for c in sorted(canvases)]
    return [token for canvas in cut for token in canvas]


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/v1/chat/completions"])
def test_an_image_gives_the_in_process_answer(server, eyes, picture, expected, path):
    chunks = streamed(server, path, requests(picture)[path])
    ids, prompt_tokens = expected
    eos = dgemma_runtime.load_config(eyes)[1].eos_token_ids
    assert generated(chunks, eos) == ids
    counted = chunks[-1]["usage"]["prompt_tokens"] if path.startswith("/v1") else chunks[-1]["prompt_eval_count"]
    assert counted == prompt_tokens  # the image's tokens included


def post(server, path: str, body: dict) -> tuple[int, str]:
    """The status and the error's message, in either API's shape."""
    response = server.http.post(path, json=body)
    error = response.json().get("error", "")
    return response.status_code, error["message"] if isinstance(error, dict) else error


def openai_body(image_url: object) -> dict:
    parts = [{"type": "image_url", "image_url": image_url}, {"type": "text", "text": TEXT}]
    return {"model": "eyes", "messages": [{"role": "user", "content": parts}]}


@pytest.mark.parametrize(
    ("path", "body", "said"),
    [
        ("/api/generate", {"model": "eyes", "prompt": TEXT, "images": ["not base64!"]}, "images[0]: not valid base64"),
        (
            "/api/chat",
            {"model": "eyes", "messages": [{"role": "user", "content": TEXT, "images": ["QUJD", "QUJ"]}]},
            "messages[0].images[1]: not valid base64",  # padding missing
        ),
        ("/api/generate", {"model": "eyes", "prompt": TEXT, "images": ["é"]}, "images[0]: not valid base64"),
        ("/v1/chat/completions", openai_body({"url": "data:image/png;base64,%%%"}), "image_url: not valid base64"),
    ],
)
def test_bad_base64_is_a_400(server, path, body, said):
    assert post(server, path, body) == (400, said)


@pytest.mark.parametrize("api", ["ollama", "openai"])
@pytest.mark.parametrize("name", [name for name in BAD if name != "absent.png"])
def test_a_bad_image_is_a_400_naming_the_problem(server, tmp_path, name, api):
    write, message = BAD[name]
    write(tmp_path / name)
    if api == "ollama":
        status, said = post(
            server, "/api/generate", {"model": "eyes", "prompt": TEXT, "images": [b64(tmp_path / name)]}
        )
    else:
        status, said = post(server, "/v1/chat/completions", openai_body({"url": data_url(tmp_path / name)}))
    assert status == 400 and message in said and "\n" not in said


@pytest.mark.parametrize(
    ("image_url", "said"),
    [
        ({"url": "https://example.com/cat.png"}, "fetches no remote URLs"),
        ("http://127.0.0.1:9/cat.png", "fetches no remote URLs"),  # the URL alone, as some clients send it
        ({"url": "data:text/plain;base64,aGk="}, "only data URLs"),
        ({"url": "file:///etc/passwd"}, "only data URLs"),
        ({"detail": "low"}, "a url is needed"),
    ],
)
def test_only_data_urls_are_taken(server, image_url, said):
    status, message = post(server, "/v1/chat/completions", openai_body(image_url))
    assert status == 400 and message.startswith("image_url: ") and said in message


def test_other_content_parts_are_a_400(server):
    parts = [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]
    body = {"model": "eyes", "messages": [{"role": "user", "content": parts}]}
    assert post(server, "/v1/chat/completions", body) == (400, "only text and image_url content parts are supported")


@needs_builtin
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/v1/chat/completions"])
def test_a_text_only_model_refuses_images_before_it_loads(server, picture, path):
    before = server.counters()
    status, said = post(server, path, requests(picture)[path] | {"model": "dgemma-tiny", "stream": False})
    assert status == 400 and "reads text only" in said
    assert server.counters() == before  # refused before it waited: nothing queued, loaded or run


@needs_builtin
def test_show_lists_the_vision_capability(server):
    capabilities = {
        m: server.http.post("/api/show", json={"model": m}).json()["capabilities"] for m in ("eyes", "dgemma-tiny")
    }
    assert capabilities == {"eyes": ["completion", "thinking", "vision"], "dgemma-tiny": ["completion", "thinking"]}


# -- batching, over a fake engine -----------------------------------------------------------------------------


class FakeEngine:
    """Answers each row with one canvas; keeps every prompt it is given."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(max_position_embeddings=1024, canvas_length=16)
        self.defaults = GenerationDefaults()
        self.tokenizer = object()  # the fake prompts render without it
        self.device = SimpleNamespace(type="cpu")
        self.given: list[PreparedPrompt | list[list[int]]] = []

    def stream(self, prompts: PreparedPrompt | list[list[int]], options: object):
        self.given.append(prompts)
        rows = [prompts.ids] if isinstance(prompts, PreparedPrompt) else prompts
        for r in range(len(rows)):
            yield CanvasEvent(r, 0, (5, 1), 1, text="ok", done=True)
        yield FinalEvent(stats=STATS, token_ids=tuple((5, 1) for _ in rows))


STATS = GenerationStats(1, 2, 1, 1, (1,), 0.0, 0.0, 0.0, 0.0, 0.0)


def with_images(token: int) -> PreparedPrompt:
    return PreparedPrompt([token] * 10, torch.zeros(1, 4, 48), torch.zeros(1, 4, 2, dtype=torch.long))


def test_a_request_with_images_runs_alone():
    engine = FakeEngine()
    pictured = [with_images(7), with_images(8)]
    prompts: list[PreparedPrompt | list[int]] = [pictured[0], [1] * 10, pictured[1], [2] * 10]

    async def main() -> None:
        worker = Worker(lambda *_: engine, max_queue=8, max_batch=8)
        jobs = [Job(MODEL, lambda _tokenizer, prompt=prompt: prompt, math.inf) for prompt in prompts]
        for job in jobs:
            worker.submit(job)  # all waiting before the worker takes the first
        worker.start()
        try:
            for job in jobs:
                assert isinstance([item async for item in job.items(never)][-1], Finished)
        finally:
            worker.stop()

    asyncio.run(main())
    # The first job shares with nobody; the two text prompts share one batch; the second image runs alone.
    assert len(engine.given) == 3 and engine.given[0] is pictured[0] and engine.given[2] is pictured[1]
    assert engine.given[1] == [[1] * 10, [2] * 10]


MODEL = store.Manifest(name="fake", tag="latest", path="/nowhere", source="local")


async def never() -> bool:
    return False
