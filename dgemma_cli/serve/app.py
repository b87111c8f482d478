"""`dgemma serve`: the FastAPI app, Ollama's API under /api (ollama.py) and OpenAI's under /v1 (openai.py), and
the socket it listens on."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from dgemma_runtime import DgemmaError
from fastapi import FastAPI
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.requests import Request

from ..client import address  # where `run`, `ps` and `stop` look for the server too
from ..errors import UsageProblem
from ..models import store
from .guard import Guard, Policy
from .ollama import router as ollama
from .openai import router as openai
from .schema import BadRequest, keep_alive_seconds
from .shared import ServeState, error_response
from .worker import Disconnected, Loader, Worker


class ServeError(DgemmaError):
    pass


# -- the app ---------------------------------------------------------------------------------------


def create_app(state: ServeState, policy: Policy | None = None) -> FastAPI:
    """The app behind its guard (guard.py): by default a loopback server's, no other origins, no key."""
    app = FastAPI(title="dgemma", docs_url=None, redoc_url=None, openapi_url="/openapi.json")  # test_fuzz.py uses it
    app.state.serve = state
    app.add_middleware(Guard, policy=policy or Policy())
    app.include_router(ollama)
    app.include_router(openai)

    @app.exception_handler(DgemmaError)
    async def dgemma_error(request: Request, exc: DgemmaError) -> Response:
        return error_response(request, exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error_response(request, Exception(exc.detail), exc.status_code)

    @app.exception_handler(Disconnected)
    async def disconnected(request: Request, exc: Disconnected) -> Response:
        return Response(status_code=499)  # nobody reads it: the client has gone

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)  # two methods: one id, twice
    async def root() -> Response:
        return Response("dgemma is running", media_type="text/plain")

    return app


def listen(host: str, port: int) -> socket.socket:
    """Bound and listening before the server starts, so a busy port is one line, and --port 0 gets a free one."""
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(2048)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(
    host: str | None,
    port: int | None,
    model: str | None,
    keep_alive: str,
    max_queue: int,
    max_batch: int,
    loader: Loader,
    announce: Callable[[str], None],
) -> None:
    """Run until interrupted. With a `model`, it is loaded before the server listens (and is the default)."""
    import uvicorn

    try:
        idle = keep_alive_seconds(keep_alive, 0.0)
    except BadRequest as exc:
        raise UsageProblem(str(exc)) from None
    host, port = address(host, port, os.environ.get("DGEMMA_HOST"))
    sock = listen(host, port)
    worker = Worker(loader, max_queue, max_batch)
    default = store.resolve(model) if model else None
    if default is not None:
        worker.preload(default, idle)
    worker.start()
    bound_host, bound_port = sock.getsockname()[:2]
    policy = Policy.from_env(bound_host, os.environ)
    app = create_app(ServeState(worker, default, idle), policy)
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    announce(f"serving the Ollama API (/api) and the OpenAI API (/v1) on http://{shown}:{bound_port}")
    if exposed := policy.exposure(shown):
        announce(exposed)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            app.state.serve.stopping = True  # open streams end now with an error line, not cancelled mid-write
            await super().shutdown(sockets)

    try:
        Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3)).run(sockets=[sock])
    finally:
        worker.stop()
        sock.close()
