"""Talking to a running `dgemma serve`, as Ollama's command line talks to its server: where it is (DGEMMA_HOST), its
JSON routes, and its NDJSON streams with `"frames": true` turned back into the runtime's events, so `run` and the
chat feed the same views as in-process. Standard library only (http.client): `ps` and `stop` start at once."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from urllib.parse import urlsplit

from dgemma_runtime import (
    OPTION_RANGES,
    CanvasEvent,
    DgemmaError,
    Event,
    FinalEvent,
    GenerationOptions,
    GenerationStats,
    Message,
    StepEvent,
    Tokenizer,
    load_config,
)

from .errors import UsageProblem
from .models import store

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 11435
PROBE_SECONDS = 0.5  # a server on this machine answers in milliseconds; a port nobody listens on is refused at once
RUNNING = "dgemma is running"  # what the server's `GET /` says (Ollama's says "Ollama is running")


class ServerError(DgemmaError):
    """The server could not be reached, or failed a request (its own message)."""


def address(host: str | None, port: int | None, env: str | None) -> tuple[str, int]:
    """--host and --port, each falling back to DGEMMA_HOST (`host[:port]`, a scheme allowed), then the defaults."""
    env_host, env_port = None, None
    if env:
        try:
            parts = urlsplit(env if "://" in env else f"//{env}")
            env_host, env_port = parts.hostname, parts.port
        except ValueError as exc:
            raise UsageProblem(f"DGEMMA_HOST={env!r} is not host[:port] ({exc})") from None
    return host or env_host or DEFAULT_HOST, port if port is not None else env_port or DEFAULT_PORT


class Server:
    """The server at DGEMMA_HOST (or the default address). Every failure is a ServerError (exit 1), or a
    UsageProblem (exit 2) for what the server calls a bad request."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        key = os.environ.get("DGEMMA_API_KEY")  # a server bound beyond loopback may want one
        self.headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})

    @classmethod
    def from_env(cls) -> Server:
        return cls(*address(None, None, os.environ.get("DGEMMA_HOST")))

    @property
    def url(self) -> str:
        return f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}"

    def running(self) -> bool:
        """Whether a dgemma server (not some other program) answers here."""
        try:
            response = self._send("GET", "/", None, PROBE_SECONDS)
            return response.status == 200 and response.read().decode(errors="replace") == RUNNING
        except (OSError, http.client.HTTPException):
            return False

    def get(self, path: str) -> dict:
        return json.loads(self._checked("GET", path, None).read())

    def post(self, path: str, body: dict) -> dict:
        return json.loads(self._checked("POST", path, body).read())

    def stream(self, path: str, body: dict) -> Iterator[dict]:
        """The NDJSON objects of a streamed answer; closing the iterator closes the connection, which stops the
        generation on the server (Ctrl-C)."""
        response = self._checked("POST", path, body)
        try:
            for line in response:
                if line.strip():
                    record = json.loads(line)
                    if "error" in record:  # a failure after the status line: the stream's last object
                        raise ServerError(record["error"])
                    yield record
        except (OSError, http.client.HTTPException) as exc:
            raise ServerError(f"the server at {self.url} went away: {exc}") from None
        finally:
            response.close()

    def _send(self, method: str, path: str, body: dict | None, timeout: float | None) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=self.headers)
        return connection.getresponse()

    def _checked(self, method: str, path: str, body: dict | None) -> http.client.HTTPResponse:
        try:
            response = self._send(method, path, body, None)  # no timeout: a first load may take minutes
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ServerError(
                f"no dgemma server answers at {self.url} ({reason}): start one with 'dgemma serve --detach'"
            ) from None
        if response.status >= 400:
            raw = response.read()
            try:
                message = json.loads(raw)["error"]
                message = message["message"] if isinstance(message, dict) else message
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace").strip() or response.reason
            raise (UsageProblem if response.status == 400 else ServerError)(str(message))
        return response


def server_for(model: str, local_only: Sequence[str]) -> tuple[Server | None, str]:
    """The server `run` hands `model` to, or None: the model runs in this process. With why, for --verbose."""
    if model.startswith((".", "/", "~")) or Path(model).expanduser().is_dir():
        return None, "this process (a model folder is loaded by whoever names it)"
    if local_only:
        return None, f"this process (with {', '.join(local_only)}, which the server's model cannot take)"
    server = Server.from_env()
    if not server.running():
        return None, f"this process (no dgemma server at {server.url})"
    return server, f"dgemma serve at {server.url}"


def unload(server: Server, ref: str) -> None:
    """`ollama stop`: the server lets the model go now (keep-alive 0); a model it does not hold is an error."""
    hub = store.hub_ref(ref)
    name, tag = store.hub_name(*hub) if hub else store.parse_name(ref)
    if f"{name}:{tag}" not in [m["name"] for m in server.get("/api/ps")["models"]]:
        raise ServerError(f"model '{ref}' is not loaded (see 'dgemma ps')")
    server.post("/api/generate", {"model": ref, "keep_alive": 0, "stream": False})


def _known(cls: type, record: dict) -> dict:
    """The record's values for `cls`'s fields, JSON lists back as tuples (what the runtime's events hold)."""
    values = {f.name: record[f.name] for f in fields(cls) if f.name in record}
    return {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}


class Remote:
    """One model on the server, as `run` and the chat ask for it. The model's tokenizer and defaults are read from
    the local store (the server's, on this machine): the live view decodes the step frames' token ids with it."""

    def __init__(self, server: Server, ref: str, keep_alive: str | None) -> None:
        manifest = store.resolve(ref)
        tokenizer = manifest.folder / "tokenizer.json"
        if not tokenizer.exists():
            raise UsageProblem(f"model '{ref}' has no tokenizer.json, so it cannot take text prompts")
        self.server, self.ref, self.manifest, self.keep_alive = server, ref, manifest, keep_alive
        self.tokenizer = Tokenizer(tokenizer)
        self.defaults = load_config(manifest.folder)[1]
        self.load_seconds = 0.0  # of the last answer: what its model load took on the server, if it had to load

    def generate(self, text: str, system: str | None, think: bool, options: GenerationOptions) -> Iterator[Event]:
        """One prompt, rendered on the server as `run` renders it in-process (the same seed, the same answer)."""
        return self._events("/api/generate", {"prompt": text, "system": system, "think": think}, options)

    def chat(self, messages: Sequence[Message], think: bool, options: GenerationOptions) -> Iterator[Event]:
        turns = [{"role": m.role, "content": m.content} for m in messages]
        return self._events("/api/chat", {"messages": turns, "think": think}, options)

    def load(self) -> None:
        """Make the model resident now (Ollama's empty request); the server lets the previous one go first."""
        self.server.post("/api/generate", self._fields() | {"stream": False})

    def _fields(self) -> dict:
        return {"model": self.ref} | ({"keep_alive": self.keep_alive} if self.keep_alive is not None else {})

    def _events(self, path: str, body: dict, options: GenerationOptions) -> Iterator[Event]:
        wire = {k: v for k, v in asdict(options).items() if k in OPTION_RANGES and v is not None}
        body = body | self._fields() | {"options": wire, "stream": True, "frames": True}
        self.load_seconds = 0.0
        for record in self.server.stream(path, body):
            if record.get("type") == "step":
                yield StepEvent(**_known(StepEvent, {"row": 0} | record))  # the server leaves the batch row out
            elif "canvas" in record:
                yield CanvasEvent(**_known(CanvasEvent, {"row": 0} | record["canvas"]))
            elif record.get("done"):
                self.load_seconds = record.get("load_duration", 0) / 1e9
                stats = GenerationStats(**_known(GenerationStats, record["stats"]))
                # A batch's stats count every row: this request's own counts are the chunk's.
                counts = {"prompt_tokens": record["prompt_eval_count"], "generated_tokens": record["eval_count"]}
                yield FinalEvent(replace(stats, **counts))
