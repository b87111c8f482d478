"""Schemathesis fuzzes the served API against the OpenAPI schema it publishes (/openapi.json), in process, over
the tiny model loaded for real: no request, valid or not, may answer 500; every error is one line in its API's
shape; a stream that answers 200 ends as its clients expect. Generation is kept to one canvas of two steps."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from huggingface_hub import constants
from schemathesis.config import SchemathesisConfig
from starlette.testclient import TestClient

from dgemma_cli.app import LoadSettings, load_model
from dgemma_cli.models import store
from dgemma_cli.serve.app import create_app
from dgemma_cli.serve.guard import Policy
from dgemma_cli.serve.shared import ServeState
from dgemma_cli.serve.worker import Worker

EXAMPLES = 25  # fuzzed bodies per operation, beside the coverage phase's: the module takes ~20 s on 2 cores
CONFIG = {
    "generation": {"mode": "all", "max-examples": EXAMPLES},  # valid bodies, and bodies the schema refuses
    "phases": {"stateful": {"enabled": False}},
}
# One 16-token canvas in at most two steps: milliseconds on the tiny model, whatever else the fuzzer picked.
TINY_OLLAMA = {"num_predict": 16, "steps": 2}
TINY_OPENAI = {"max_tokens": 16, "steps": 2}
LENGTHS = ("max_new_tokens", "num_predict", "max_tokens", "max_completion_tokens", "max_denoising_steps", "steps")


# The schema is read when the module loads (Schemathesis makes one test per operation from it); the state the
# routes serve from is put in place by `served`, once the checkpoint exists.
APP = create_app(ServeState(None, None, math.inf), Policy(loopback=False))  # type: ignore[arg-type]
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=SchemathesisConfig.from_dict(CONFIG))


@pytest.fixture(scope="module", autouse=True)
def served(checkpoint: Path, tmp_path_factory) -> Iterator[None]:
    """A worker that holds 'tiny', the default model. The guard lets the test client's Host in (Policy); pulls
    find the hub offline and an empty cache, so they never leave the machine."""
    tiny = store.Manifest(name="tiny", tag="latest", path=str(checkpoint), source="local")
    worker = Worker(lambda m, _: load_model(m.path, LoadSettings("cpu", "auto", None, False))[1], max_queue=4)
    worker.preload(tiny, math.inf)
    worker.start()
    APP.state.serve = ServeState(worker, tiny, math.inf)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        patch.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("fuzz-hf-cache")))
        yield
    worker.stop()


def tame(case: schemathesis.Case) -> None:
    """Whatever lengths the fuzzer chose, a generation stays tiny."""
    body = case.body
    if not isinstance(body, dict):
        return
    options = body.get("options", {})  # absent, the model's defaults: a 2048-token answer
    if case.path in ("/api/generate", "/api/chat") and isinstance(options, dict):
        body["options"] = {k: v for k, v in options.items() if k not in LENGTHS} | TINY_OLLAMA
    elif case.path in ("/v1/completions", "/v1/chat/completions"):
        for name in LENGTHS:
            body.pop(name, None)
        body.update(TINY_OPENAI)


def no_server_error(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """503 is the server's busy or hub-unreachable answer, by design; any other 5xx is a bug."""
    assert response.status_code < 500 or response.status_code == 503, f"{response.status_code}: {response.text}"


def errors_are_one_line(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    if response.status_code < 400:
        return
    error = json.loads(response.content)["error"]
    message = error["message"] if case.path.startswith("/v1/") else error
    assert isinstance(message, str) and message and "\n" not in message, error


def streams_end_well(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """A 200 stream carries no error (what can be checked is checked before its first byte) and ends as its
    clients expect: Ollama's `done` object, OpenAI's `[DONE]`."""
    if response.status_code != 200:
        return
    kind, text = response.headers.get("content-type", [""])[0], response.content.decode()
    if kind.startswith("application/x-ndjson"):
        lines = [json.loads(line) for line in text.splitlines()]
        assert not any("error" in line for line in lines), text
        assert lines[-1].get("done") is True or lines[-1].get("status") == "success", lines[-1]
    elif kind.startswith("text/event-stream"):
        events = [block.removeprefix("data: ") for block in text.split("\n\n") if block]
        assert events[-1] == "[DONE]", text
        assert not any("error" in json.loads(event) for event in events[:-1]), text


@schema.parametrize()
def test_no_request_is_a_server_error(case: schemathesis.Case) -> None:
    tame(case)
    case.call_and_validate(checks=[no_server_error, errors_are_one_line, streams_end_well])


def test_the_published_schema_describes_every_request_body() -> None:
    """The routes read their bodies by hand (`read_body`), so FastAPI alone would publish none of them."""
    published = TestClient(APP, base_url="http://localhost").get("/openapi.json").json()
    posts = {path: item["post"] for path, item in published["paths"].items() if "post" in item}
    assert set(posts) == {f"/api/{p}" for p in ("generate", "chat", "show", "pull")} | {
        "/v1/chat/completions",
        "/v1/completions",
    }
    bodies = {path: post["requestBody"]["content"]["application/json"]["schema"] for path, post in posts.items()}
    assert "options" in bodies["/api/generate"]["properties"]
    message = bodies["/api/chat"]["properties"]["messages"]["items"]
    assert message["properties"]["role"]["enum"] == ["assistant", "developer", "model", "system", "user"]
    assert bodies["/v1/chat/completions"]["required"] == ["messages"]
    assert bodies["/v1/completions"]["properties"]["seed"]["anyOf"][0]["exclusiveMaximum"] == 2**64
    assert "$ref" not in json.dumps(bodies)  # each stands alone
