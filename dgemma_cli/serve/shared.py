"""What the Ollama and OpenAI routes share: the server's state, which model a request names, handing a job to the
model worker and following it, errors as each API shapes them, and NDJSON or server-sent-event streams. A leaf:
it imports neither API."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dgemma_runtime import (
    CanvasEvent,
    DgemmaError,
    GenerationDefaults,
    GenerationOptions,
    ImageError,
    OptionError,
    StepEvent,
    VisionConfig,
    load_config,
)
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ..errors import UsageProblem
from ..models import store
from .schema import BadRequest, Render, keep_alive_seconds
from .worker import Disconnected, Finished, Item, Job, QueueFull, Started, Worker, model_vision, prepare

RETRY_AFTER_SECONDS = 2
log = logging.getLogger("dgemma.serve")


class ShuttingDown(DgemmaError):
    def __init__(self) -> None:
        super().__init__("the server is shutting down")


STATUS = (
    ((QueueFull, ShuttingDown), 503),
    (store.ModelNotFound, 404),
    ((BadRequest, OptionError, UsageProblem, store.StoreError, ImageError), 400),
)


# -- shared state ----------------------------------------------------------------------------------


@dataclass
class ServeState:
    worker: Worker
    default_model: store.Manifest | None  # --model: requests may leave the model out
    keep_alive: float  # seconds, for requests that do not say
    stopping: bool = False  # the server is shutting down: what is still open ends now, with an error
    _defaults: dict[Path, GenerationDefaults] = field(default_factory=dict)
    unlisted: set[str] = field(default_factory=set)  # store entries that cannot be listed, logged once each

    def manifest(self, ref: str) -> store.Manifest:
        """A stored or built-in model by name. A request never names a folder: only the operator's --model may be
        one, and requests reach it by its name."""
        if not ref:
            if self.default_model is None:
                raise BadRequest("no model given: name one, or start the server with --model")
            return self.default_model
        # `name[:tag]` or a hub repo `[hf.co/]org/repo[:revision]`: anything path-like is malformed
        pathlike = ref.startswith((".", "/")) or any(bad in ref for bad in ("..", "\\", "~")) or not ref.isprintable()
        if pathlike or ("/" in ref and store.hub_ref(ref) is None):
            raise BadRequest(f"invalid model name {ref!r}: name a stored model (name[:tag]) or a hub repo (org/repo)")
        if self.default_model is not None and ref in (self.default_model.ref, model_name(self.default_model)):
            return self.default_model
        return store.lookup(ref)  # never a path: `tiny/../../x` must not reach a folder beside the store

    def defaults(self, manifest: store.Manifest) -> GenerationDefaults:
        if manifest.folder not in self._defaults:
            self._defaults[manifest.folder] = load_config(manifest.folder)[1]
        return self._defaults[manifest.folder]

    def job(
        self,
        ref: str,
        keep_alive: float | str | None,
        render: Render | None,
        options: GenerationOptions,
        frames: bool,
    ) -> Job:
        """A job for the named model. Its options are checked against the model's defaults here, so a bad value
        is a 400 before anything waits."""
        manifest = self.manifest(ref)
        resolved = options.resolve(self.defaults(manifest)) if render is not None else None
        seconds = keep_alive_seconds(keep_alive, self.keep_alive)
        return Job(manifest, render, seconds, options, resolved, frames)

    async def start(self, request: Request, job: Job) -> tuple[Started | None, AsyncIterator[Item]]:
        """Queue the job and wait for it to begin: (how it started, the items that follow). Failures before the
        first item (a model that will not load, a prompt that does not fit) raise here, so they get a status."""
        if job.render is not None:  # a prompt or answer length that does not fit is a 400 now, not after the wait
            await run_in_threadpool(prepare, job, self.defaults(job.model))
        self.worker.submit(job)
        items = self._follow(job, request.is_disconnected)
        return await anext(items, None), items  # type: ignore[return-value]

    async def _follow(self, job: Job, disconnected: Callable) -> AsyncIterator[Item]:
        async def gone() -> bool:  # polled while the job waits
            if self.stopping:
                raise ShuttingDown()
            return await disconnected()

        complete = False
        try:
            async for item in job.items(gone):
                if self.stopping:  # an open stream ends with an error line instead of being cancelled mid-write
                    raise ShuttingDown()
                yield item
            complete = True
        finally:
            if not complete:  # the client left, or the response failed: stop generating for it
                self.worker.cancel(job)


def state_of(request: Request) -> ServeState:
    return request.app.state.serve


async def vision_of(request: Request, ref: str) -> VisionConfig | None:
    """The named model's vision tower (None: it reads text only), for a prompt with images; nothing is loaded."""
    return await run_in_threadpool(model_vision, state_of(request).manifest(ref).folder)


def listed_models(state: ServeState) -> list[store.Manifest]:
    """The store's models, and the --model folder when it is not one of them."""

    def skipped(problem: str) -> None:
        if problem not in state.unlisted:
            state.unlisted.add(problem)
            log.warning("not listing %s", problem)

    models = store.list_models(skipped)
    default = state.default_model
    if default is not None and all(m.folder != default.folder for m in models):
        models.append(default)
    return models


def model_name(manifest: store.Manifest) -> str:
    """Names as Ollama lists them: always with a tag."""
    return f"{manifest.name}:{manifest.tag}"


# -- what both APIs show ---------------------------------------------------------------------------


class Transcript:
    """Answer and thinking so far. Like `dgemma run`, each starts at its first non-space character."""

    def __init__(self) -> None:
        self.answer = self.thinking = ""

    def add(self, event: CanvasEvent) -> tuple[str, str]:
        text = event.text if self.answer else event.text.lstrip()
        thinking = event.thinking if self.thinking else event.thinking.lstrip()
        self.answer += text
        self.thinking += thinking
        return text, thinking

    async def read_all(self, items: AsyncIterator[Item]) -> Finished:
        """Take a whole generation in; the worker ends every one with its statistics."""
        finished = None
        async for item in items:
            if isinstance(item, CanvasEvent):
                self.add(item)
            elif isinstance(item, Finished):
                finished = item
        assert finished is not None, "the worker ends every generation with its statistics"
        return finished


def step_frame(event: StepEvent) -> dict[str, object]:
    """A step for visualisers, as `dgemma run --frames` writes it; the batch row is the server's business."""
    return {"type": "step", **{k: v for k, v in asdict(event).items() if k != "row"}}


def canvas_frame(event: CanvasEvent) -> dict[str, object]:
    """A finished canvas as `run --frames` writes it (its ids, steps and raw text), minus the row: what the text
    chunk of a stream with frames carries, so `dgemma run` through the server shows what it shows in-process."""
    return {k: v for k, v in asdict(event).items() if k != "row"}


def status_of(exc: Exception) -> int:
    return next((status for kinds, status in STATUS if isinstance(exc, kinds)), 500)


def is_openai(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def ollama_error(message: str) -> dict[str, object]:
    return {"error": message}


def openai_error(message: str, status: int) -> dict[str, object]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def message_of(exc: Exception) -> str:
    """One line: the first of the exception's, or its type when it says nothing."""
    return next(iter(str(exc).strip().splitlines()), "") or type(exc).__name__


def error_response(request: Request, exc: Exception, status: int | None = None) -> Response:
    status = status or status_of(exc)
    message = message_of(exc)
    body = openai_error(message, status) if is_openai(request) else ollama_error(message)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


async def _lines(chunks: AsyncIterator[dict], frame: Callable[[dict], str], error: Callable[[Exception], dict]):
    """Each chunk framed. A failure after the status line has gone out becomes the stream's last object, in the
    shape each API's clients raise on: Ollama's `{"error": ...}` line, OpenAI's error event before `[DONE]`."""
    try:
        async for chunk in chunks:
            yield frame(chunk)
    except Disconnected:
        return
    except Exception as exc:
        if not isinstance(exc, DgemmaError):  # a bug, not a failure with its own message: log its traceback
            log.error("a streamed response failed", exc_info=exc)
        yield frame(error(exc))


def ndjson(chunks: AsyncIterator[dict]) -> StreamingResponse:
    def error(exc: Exception) -> dict:
        return ollama_error(message_of(exc))

    return StreamingResponse(_lines(chunks, lambda c: json.dumps(c) + "\n", error), media_type="application/x-ndjson")


def sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
    def error(exc: Exception) -> dict:
        return openai_error(message_of(exc), status_of(exc))

    async def events() -> AsyncIterator[str]:
        async for line in _lines(chunks, lambda c: f"data: {json.dumps(c)}\n\n", error):
            yield line
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
