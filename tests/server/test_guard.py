"""Who may use the server: model names that reach only the store, the browser checks (Origin, Host, CORS
preflight, DGEMMA_ORIGINS), the optional DGEMMA_API_KEY, and the line a server others can reach prints.

Most run in-process against `create_app`, over a worker whose loader only records what it is asked to load; the
real process checks that `dgemma serve` wires the guard in."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from dgemma_cli.models import pull as pulling
from dgemma_cli.models import store
from dgemma_cli.serve.app import create_app
from dgemma_cli.serve.guard import Policy
from dgemma_cli.serve.schema import BadRequest
from dgemma_cli.serve.shared import ServeState
from dgemma_cli.serve.worker import Worker
from tests.server.conftest import STARTUP_SECONDS
from tests.support.cli import BUILTIN_CONFIG, DGEMMA

LOCAL = "http://localhost:11435"  # what a client on this machine sends as Host
FOREIGN = "https://evil.example"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": False}


class Served(SimpleNamespace):
    client: TestClient
    loaded: list[store.Manifest]  # every model the worker was asked to load, in order


@pytest.fixture
def pulls(monkeypatch) -> list[object]:
    """Every pull /api/pull starts (none reaches a hub)."""
    started: list[object] = []

    def pull_model(target: object) -> Iterator[object]:
        started.append(target)
        yield pulling.Pulled(None, 0, 0.0)  # type: ignore[arg-type]  # a finished pull, as far as the route can tell

    monkeypatch.setattr(pulling, "pull_model", pull_model)
    return started


@pytest.fixture
def serve_app(serve_env, monkeypatch) -> Iterator[Callable[..., Served]]:
    """`serve_app(policy, default=...)`: the app over the shared store ('tiny'), with `default` resident."""
    monkeypatch.setenv("DGEMMA_MODELS", serve_env["DGEMMA_MODELS"])
    workers: list[Worker] = []

    def make(policy: Policy | None = None, default: str | None = "tiny") -> Served:
        loaded: list[store.Manifest] = []

        def loader(manifest: store.Manifest, _progress: object) -> SimpleNamespace:
            loaded.append(manifest)
            return SimpleNamespace(device=SimpleNamespace(type="cpu"))  # enough for /api/ps; never generates

        worker = Worker(loader, max_queue=4, max_batch=1)
        manifest = store.lookup(default) if default else None
        if manifest is not None:
            worker.preload(manifest, 3600)
        worker.start()
        workers.append(worker)
        app = create_app(ServeState(worker, manifest, 3600), policy)
        return Served(client=TestClient(app, base_url=LOCAL, raise_server_exceptions=False), loaded=loaded)

    yield make
    for worker in workers:
        worker.stop()


def resident(served: Served) -> list[str]:
    return [m["model"] for m in served.client.get("/api/ps").json()["models"]]


# -- model names reach the store and nothing else ----------------------------------------------------------


@pytest.fixture
def beside_the_store(tmp_path, checkpoint, monkeypatch) -> Path:
    """A working directory where names that were paths would find models: ./outside, ./tiny/../outside and
    ./acme/outside are all the test checkpoint."""
    (tmp_path / "tiny").mkdir()
    (tmp_path / "acme").mkdir()
    (tmp_path / "outside").symlink_to(checkpoint, target_is_directory=True)
    (tmp_path / "acme" / "outside").symlink_to(checkpoint, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "outside"


MALFORMED = [
    "tiny/../outside",
    "tiny/../../x",
    "./outside",
    "outside/",
    "tiny/x/y",
    "..",
    "~/outside",
    "tiny\\..\\outside",
    "acme\\outside",
    "tiny\x00",
]
NOT_STORED = ["outside", "acme/outside", "hf.co/acme/outside:main"]  # well-formed names of folders on disk


def request_for(path: str, model: str) -> dict:
    if path == "/api/show":
        return {"model": model}
    if path == "/api/generate":
        return {"model": model, "prompt": "Hi", "stream": False}
    return CHAT | {"model": model}


@pytest.mark.parametrize("path", ["/api/show", "/api/chat", "/api/generate", "/v1/chat/completions"])
def test_a_model_name_never_reaches_a_folder_outside_the_store(serve_app, beside_the_store, path):
    served = serve_app()
    malformed = [*MALFORMED, str(beside_the_store)]  # an absolute path too
    for name, status in [*((n, 400) for n in malformed), *((n, 404) for n in NOT_STORED)]:
        response = served.client.post(path, json=request_for(path, name))
        assert response.status_code == status, (name, response.text)
        error = response.json()["error"]
        assert isinstance(error["message"] if path.startswith("/v1/") else error, str)
    assert [m.ref for m in served.loaded] == ["tiny"]  # only the preload: no folder was loaded
    assert resident(served) == ["tiny:latest"]
    assert served.client.post("/api/show", json={"model": "tiny"}).status_code == 200  # the store still answers


def test_store_names_and_hub_repos_still_resolve(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setenv("DGEMMA_MODELS", str(tmp_path / "models"))
    for name, tag in [("tiny", "latest"), ("tiny", "v2"), ("acme--tiny-chat", "latest"), ("acme--tiny-chat", "rev1")]:
        store.save(store.Manifest(name=name, tag=tag, path=str(checkpoint), source="local"))
    local = store.resolve(str(checkpoint))  # `dgemma serve --model ./folder`: requests reach it by its name
    state = ServeState(Worker(lambda m, _: None), local, 0)
    named = {
        "tiny": "tiny",
        "tiny:v2": "tiny:v2",
        "acme/tiny-chat": "acme--tiny-chat",
        "hf.co/acme/tiny-chat": "acme--tiny-chat",
        "https://huggingface.co/acme/tiny-chat": "acme--tiny-chat",
        "acme/tiny-chat:rev1": "acme--tiny-chat:rev1",
        local.name: local.name,
        "": local.name,
    }
    for ref, expected in named.items():
        assert state.manifest(ref).ref == expected
    if BUILTIN_CONFIG.exists():
        assert state.manifest("dgemma-tiny").builtin
    with pytest.raises(BadRequest):
        state.manifest(str(checkpoint))  # the --model folder by its path: a path all the same
    with pytest.raises(store.ModelNotFound):
        state.manifest("acme/other")


# -- browsers: Origin, Host, preflight -----------------------------------------------------------------


def test_a_cross_site_form_post_is_refused_before_it_does_anything(serve_app, pulls):
    """What a page on another site can send without a preflight: a `text/plain` POST."""
    served = serve_app(default=None)
    page = {"Origin": FOREIGN, "Content-Type": "text/plain;charset=UTF-8"}
    pulled = served.client.post("/api/pull", content='{"model": "acme/tiny-chat"}', headers=page)
    assert pulled.status_code == 403 and FOREIGN in pulled.json()["error"]
    assert "access-control-allow-origin" not in pulled.headers  # the page may not even read the refusal
    chat = served.client.post("/api/chat", content='{"model": "tiny", "stream": false}', headers=page)
    assert chat.status_code == 403
    completion = served.client.post("/v1/chat/completions", content='{"model": "tiny"}', headers=page)
    assert completion.status_code == 403 and completion.json()["error"]["type"] == "invalid_request_error"
    assert pulls == [] and served.loaded == [] and resident(served) == []
    # the same request from curl (no Origin) is served
    assert served.client.post("/api/pull", content='{"model": "acme/tiny-chat"}').status_code == 200
    assert len(pulls) == 1


def test_an_allowed_origin_gets_its_preflight_and_can_read_answers(serve_app):
    served = serve_app()
    asked = {
        "Origin": "http://localhost:5173",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization",
    }
    preflight = served.client.options("/api/chat", headers=asked)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "content-type,authorization"
    tags = served.client.get("/api/tags", headers={"Origin": "http://localhost:5173"})
    assert tags.status_code == 200 and tags.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "Origin" in tags.headers["vary"]
    refused = served.client.options("/api/chat", headers=asked | {"Origin": FOREIGN})
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    assert served.client.get("/api/tags").headers.get("access-control-allow-origin") is None  # no Origin, no CORS


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost", True),
        ("http://localhost:3000", True),
        ("https://127.0.0.1:8443", True),
        ("http://[::1]:8080", True),
        ("http://0.0.0.0:3000", True),
        ("app://obsidian.md", True),
        ("tauri://localhost", True),
        ("vscode-webview://1abc", True),
        ("null", False),  # a sandboxed frame of any site
        (FOREIGN, False),
        ("http://localhost.evil.example", False),
        ("http://127.0.0.1.nip.io", False),
        ("http://localhost:3000.evil.example", False),
        ("https://app.example.com", True),  # DGEMMA_ORIGINS from here on
        ("http://a.trusted.dev", True),
        ("http://a.b.trusted.dev", True),
        ("https://a.trusted.dev", False),
        ("http://trusted.dev.evil.example", False),
        ("http://evil.example/.trusted.dev", False),
    ],
)
def test_origins_like_ollama(origin, allowed):
    policy = Policy.from_env("127.0.0.1", {"DGEMMA_ORIGINS": " https://app.example.com/ , http://*.trusted.dev"})
    assert policy.allows_origin(origin) is allowed
    assert Policy(origins=("*",)).allows_origin(origin)


def test_dgemma_origins_lets_a_site_in(serve_app):
    site = {"Origin": "https://app.example.com"}
    assert serve_app().client.get("/api/tags", headers=site).status_code == 403
    served = serve_app(Policy.from_env("127.0.0.1", {"DGEMMA_ORIGINS": "https://app.example.com"}))
    answer = served.client.get("/api/tags", headers=site)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example.com"
    asked = site | {"Access-Control-Request-Method": "POST", "Access-Control-Request-Private-Network": "true"}
    preflight = served.client.options("/v1/chat/completions", headers=asked)
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-private-network"] == "true"
    assert served.client.get("/api/tags", headers={"Origin": FOREIGN}).status_code == 403


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost:11435", 200),
        ("localhost", 200),
        ("LocalHost:80", 200),
        ("127.0.0.1:11435", 200),
        ("[::1]:11435", 200),
        ("evil.example", 403),
        ("evil.example:11435", 403),
        ("localhost.evil.example:11435", 403),
        ("127.0.0.1.nip.io:11435", 403),
    ],
)
def test_a_loopback_server_answers_only_local_host_names(serve_app, host, status):
    served = serve_app()
    response = served.client.get("/api/tags", headers={"Host": host})
    assert response.status_code == status
    if status == 403:
        assert host in response.json()["error"]
        assert served.client.post("/v1/completions", headers={"Host": host}, json={}).json()["error"]["code"] == 403
    # bound to another address the Host is whatever name reached it
    assert serve_app(Policy(loopback=False)).client.get("/api/tags", headers={"Host": host}).status_code == 200


def test_the_real_server_refuses_a_foreign_host_and_origin(server):
    assert server.http.get("/api/tags").status_code == 200  # Host 127.0.0.1:port, no Origin
    assert server.http.get("/api/tags", headers={"Host": "evil.example"}).status_code == 403
    assert server.http.get("/api/tags", headers={"Host": f"localhost:{server.port}"}).status_code == 200
    refused = server.http.post("/api/show", content='{"model": "tiny"}', headers={"Origin": FOREIGN})
    assert refused.status_code == 403
    assert "loopback" not in server.log.read_text()  # a loopback server says nothing of it


# -- DGEMMA_API_KEY ------------------------------------------------------------------------------------------


def test_the_api_key_is_required_and_compared(serve_app):
    served = serve_app(Policy(api_key="sekrit"))
    http = served.client
    assert http.get("/").status_code == 200  # the health check needs no key
    for path in ("/api/tags", "/api/ps", "/v1/models"):
        missing = http.get(path)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert http.get(path, headers={"Authorization": "Bearer sekrit-not"}).status_code == 401
        assert http.get(path, headers={"Authorization": "Basic sekrit"}).status_code == 401
        assert http.get(path, headers={"Authorization": "Bearer sekrit"}).status_code == 200
    assert "API key" in http.get("/api/tags").json()["error"]
    assert http.get("/v1/models").json()["error"]["code"] == 401
    # an allowed page's preflight carries no key; its request does
    asked = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"}
    assert http.options("/api/tags", headers=asked).status_code == 204


def test_the_openai_client_sends_the_key(serve_app):
    served = serve_app(Policy(api_key="sekrit"))

    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{LOCAL}/v1", api_key=key, max_retries=0, http_client=served.client)

    assert [m.id for m in client("sekrit").models.list()]
    with pytest.raises(openai.AuthenticationError) as raised:
        client("wrong").models.list()
    assert "API key" in raised.value.message


# -- a server other machines can reach ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "exposed"),
    [("127.0.0.1", False), ("::1", False), ("localhost", False), ("0.0.0.0", True), ("::", True), ("10.1.2.3", True)],
)
def test_only_a_non_loopback_bind_is_announced(host, exposed):
    line = Policy.from_env(host, {}).exposure(host)
    assert (line is not None) is exposed
    if exposed:
        assert "not a loopback address" in line and "set DGEMMA_API_KEY" in line
        assert "must carry" in Policy.from_env(host, {"DGEMMA_API_KEY": "k"}).exposure(host)


def test_serving_on_all_interfaces_says_so_and_wants_the_key(serve_env, tmp_path):
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        process = subprocess.Popen(
            [DGEMMA, "serve", "--host", "0.0.0.0", "--port", "0"],
            env=serve_env | {"DGEMMA_API_KEY": "sekrit"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while "0.0.0.0 is not a loopback address" not in log.read_text():  # the line after the address
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        found = re.search(r"on http://0\.0\.0\.0:(\d+)", log.read_text())
        assert found, log.read_text()
        url = f"http://127.0.0.1:{found.group(1)}"
        assert httpx.get(f"{url}/").status_code == 200
        assert httpx.get(f"{url}/api/tags").status_code == 401
        keyed = {"Authorization": "Bearer sekrit", "Host": "dgemma.lan"}  # any Host: it is not a loopback bind
        assert httpx.get(f"{url}/api/tags", headers=keyed).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
