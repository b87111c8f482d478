"""Who may use the server. A web page may send requests to 127.0.0.1 too, so like Ollama the server refuses
browser requests from origins that are not local (unless DGEMMA_ORIGINS allows them) and, on a loopback bind,
Host headers that are not local (DNS rebinding). DGEMMA_API_KEY, when set, is a bearer key every request but
`GET /` must carry. A pure ASGI middleware in front of the app; requests without an Origin (curl, SDKs) pass."""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .shared import error_response

# Pages this machine serves, and local apps whose pages no web site can pose as (Ollama allows the same). Not
# "null": sandboxed frames of any site send it.
LOCAL_ORIGIN = re.compile(
    r"https?://(localhost|127\.0\.0\.1|\[::1\]|0\.0\.0\.0)(:\d{1,5})?"
    r"|(app|file|tauri|vscode-webview|vscode-file)://[^/?#@\s]*",
    re.IGNORECASE,
)
LOCAL_HOST = re.compile(r"(localhost|127\.0\.0\.1|\[::1\])(:\d{1,5})?", re.IGNORECASE)
METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"


@lru_cache(maxsize=64)
def origin_pattern(allowed: str) -> re.Pattern[str]:
    """`*` alone is any origin; elsewhere `*` stands for part of a host or a port (`http://*.example.com`), so
    it cannot stretch over a `/` or an `@` into some other site."""
    if allowed == "*":
        return re.compile(r".*", re.DOTALL)
    return re.compile(r"[^/?#@\s]*".join(map(re.escape, allowed.rstrip("/").split("*"))), re.IGNORECASE)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


@dataclass(frozen=True)
class Policy:
    loopback: bool = True  # bound to a loopback address: only local Host headers are served
    origins: tuple[str, ...] = ()  # DGEMMA_ORIGINS: browser origins allowed beyond the local ones
    api_key: str = ""  # DGEMMA_API_KEY: when set, required as `Authorization: Bearer <key>`

    @classmethod
    def from_env(cls, bound_host: str, env: Mapping[str, str]) -> Policy:
        origins = tuple(o.strip() for o in env.get("DGEMMA_ORIGINS", "").split(",") if o.strip())
        return cls(is_loopback(bound_host), origins, env.get("DGEMMA_API_KEY", ""))

    def allows_origin(self, origin: str) -> bool:
        return bool(LOCAL_ORIGIN.fullmatch(origin)) or any(origin_pattern(o).fullmatch(origin) for o in self.origins)

    def has_key(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        # constant time: how much of a guess matched must not show in how long the answer takes
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    def exposure(self, where: str) -> str | None:
        """The line `serve` prints when other machines can reach it."""
        if self.loopback:
            return None
        key = "requests must carry DGEMMA_API_KEY" if self.api_key else "set DGEMMA_API_KEY to require a key"
        return f"{where} is not a loopback address: other machines can reach this server ({key})"


class Guard:
    def __init__(self, app: ASGIApp, policy: Policy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        origin = request.headers.get("origin")
        preflight = (
            origin is not None and request.method == "OPTIONS" and "access-control-request-method" in request.headers
        )
        answer = self.refusal(request, origin, preflight)
        if answer is None and preflight and origin is not None:
            answer = allowed_preflight(origin, request.headers)
        if answer is not None:
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, cors(send, origin) if origin is not None else send)

    def refusal(self, request: Request, origin: str | None, preflight: bool) -> Response | None:
        host = request.headers.get("host")
        if self.policy.loopback and host is not None and not LOCAL_HOST.fullmatch(host):
            return error_response(request, Exception(f"host {host!r} is not allowed: use localhost"), 403)
        if origin is not None and not self.policy.allows_origin(origin):
            message = f"origin {origin!r} is not allowed: DGEMMA_ORIGINS can allow it"
            return error_response(request, Exception(message), 403)
        # `GET /` is the health check; a preflight never carries credentials (the request it asks about does)
        exempt = preflight or (request.method in ("GET", "HEAD") and request.url.path == "/")
        if self.policy.api_key and not exempt and not self.policy.has_key(request.headers.get("authorization", "")):
            message = "missing or wrong API key: send 'Authorization: Bearer <DGEMMA_API_KEY>'"
            response = error_response(request, Exception(message), 401)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return None


def allowed_preflight(origin: str, asked: Headers) -> Response:
    """A browser asks before a cross-origin POST with JSON or an Authorization header: say yes to all of it."""
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": METHODS,
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }
    if wanted := asked.get("access-control-request-headers"):
        headers["Access-Control-Allow-Headers"] = wanted
    if asked.get("access-control-request-private-network") == "true":  # Chrome, from a public site to 127.0.0.1
        headers["Access-Control-Allow-Private-Network"] = "true"
    return Response(status_code=204, headers=headers)


def cors(send: Send, origin: str) -> Send:
    """Let the allowed page read the answer."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            headers["Access-Control-Allow-Origin"] = origin
            headers.add_vary_header("Origin")
        await send(message)

    return sending
