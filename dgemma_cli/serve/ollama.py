"""Ollama's API under /api: generate and chat (NDJSON, one chunk per finished canvas, Ollama's statistics at the
end), the model list, show, ps, pull (progress as NDJSON) and version."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from importlib.metadata import version

from dgemma_runtime import (
    CanvasEvent,
    CheckpointError,
    DgemmaError,
    StepEvent,
    UnsupportedModelError,
    inspect,
    load_config,
)
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request

from ..facts import model_facts
from ..models import pull as pulling
from ..models import store
from ..units import count
from .schema import (
    BadRequest,
    ChatRequest,
    GenerateRequest,
    ModelRequest,
    OllamaRequest,
    PullRequest,
    Render,
    capped_body,
    chat_prompt,
    infill_prompt,
    message,
    no_structured_output,
    ollama_images,
    ollama_options,
    openapi_body,
    raw_prompt,
    read_body,
    user_prompt,
    with_infill,
)
from .shared import (
    Transcript,
    canvas_frame,
    error_response,
    listed_models,
    model_name,
    ndjson,
    state_of,
    status_of,
    step_frame,
    vision_of,
)
from .worker import Finished, Item, Job, Started

router = APIRouter(prefix="/api", dependencies=[Depends(capped_body)])
NEVER = datetime(9999, 12, 31, tzinfo=timezone.utc)  # expires_at of a model kept for good


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def ns(seconds: float) -> int:
    return round(seconds * 1e9)


# -- generate and chat -----------------------------------------------------------------------------


class Reply:
    """Ollama's response objects for one request: text per canvas, then `done` with its statistics."""

    def __init__(self, model: str, chat: bool, job: Job, started: Started | None) -> None:
        self.model, self.chat, self.job, self.started = model, chat, job, started
        self.transcript = Transcript()

    def _said(self, answer: str, thinking: str) -> dict[str, object]:
        said: dict[str, object] = {"role": "assistant", "content": answer} if self.chat else {"response": answer}
        if thinking:
            said["thinking"] = thinking
        return {"model": self.model, "created_at": now(), **({"message": said} if self.chat else said)}

    def _done(self, finished: Finished) -> dict[str, object]:
        stats = finished.stats
        return {
            "done": True,
            "done_reason": finished.finish_reason,
            "total_duration": ns(time.perf_counter() - self.job.submitted),
            "load_duration": ns(self.started.load_seconds if self.started else 0.0),
            "prompt_eval_count": finished.prompt_tokens,
            "prompt_eval_duration": ns(stats.prefill_seconds),
            "eval_count": finished.generated_tokens,
            "eval_duration": ns(stats.total_seconds - stats.prefill_seconds),
        }

    def loaded(self) -> dict[str, object]:
        """The answer to an empty request, which only loads (or unloads) the model."""
        return self._said("", "") | {"done": True, "done_reason": "unload" if self.job.keep_alive == 0 else "load"}

    async def chunks(self, items: AsyncIterator[Item]) -> AsyncIterator[dict]:
        async for item in items:
            if isinstance(item, StepEvent):
                yield step_frame(item)
            elif isinstance(item, CanvasEvent):
                said = self._said(*self.transcript.add(item)) | {"done": False}
                yield said | ({"canvas": canvas_frame(item)} if self.job.frames else {})
            elif isinstance(item, Finished):
                done = self._said("", "") | self._done(item)
                yield done | ({"stats": item.stats.as_dict()} if self.job.frames else {})  # as `run --frames`

    async def whole(self, items: AsyncIterator[Item]) -> dict[str, object]:
        finished = await self.transcript.read_all(items)
        return self._said(self.transcript.answer, self.transcript.thinking) | self._done(finished)


async def respond(request: Request, body: OllamaRequest, render: Render | None, chat: bool) -> Response:
    no_structured_output("format", bool(body.format))
    state = state_of(request)
    frames = body.frames and body.stream
    options = with_infill(ollama_options(body.options), body.infill, bool(body.think))
    job = state.job(body.model, body.keep_alive, render, options, frames)
    started, items = await state.start(request, job)
    reply = Reply(body.model or job.model.ref, chat, job, started)
    if render is None:
        return JSONResponse(reply.loaded())
    if body.stream:
        return ndjson(reply.chunks(items))
    return JSONResponse(await reply.whole(items))


@router.post("/generate", openapi_extra=openapi_body(GenerateRequest))
async def generate(request: Request) -> Response:
    body = await read_body(request, GenerateRequest)
    images = ollama_images(body.images, "images")
    think = bool(body.think)
    prompt = infill_prompt(body.prompt, body.infill)
    if not prompt and not images:
        render = None
    elif body.raw:
        if images:
            raise BadRequest("images: a raw prompt has no chat template to place them in")
        render = raw_prompt(prompt)
    else:
        vision = await vision_of(request, body.model) if images else None
        render = user_prompt(prompt, body.system, think, images, vision)
    return await respond(request, body, render, chat=False)


@router.post("/chat", openapi_extra=openapi_body(ChatRequest))
async def chat(request: Request) -> Response:
    body = await read_body(request, ChatRequest)
    said = enumerate(body.messages)
    messages = [message(m.role, m.content, ollama_images(m.images, f"messages[{i}].images")) for i, m in said]
    vision = await vision_of(request, body.model) if any(m.images for m in messages) else None
    render = chat_prompt(messages, bool(body.think), vision) if messages else None
    return await respond(request, body, render, chat=True)


# -- models ----------------------------------------------------------------------------------------


def details(manifest: store.Manifest) -> dict[str, object]:
    try:
        size = count(inspect(manifest.folder).parameters[0])
    except DgemmaError:  # a folder that is not (or no longer) a readable model still gets listed
        size = ""
    return {
        "parent_model": "",
        "format": manifest.format,
        "family": "diffusion_gemma",
        "families": ["diffusion_gemma"],
        "parameter_size": size,
        "quantization_level": manifest.quantization,
    }


def entry(manifest: store.Manifest) -> dict[str, object]:
    return {
        "name": model_name(manifest),
        "model": model_name(manifest),
        "modified_at": manifest.modified or None,
        "size": manifest.size_bytes(),
        "digest": manifest.digest,
        "details": details(manifest),
    }


@router.get("/tags")
async def tags(request: Request) -> dict[str, object]:
    return {"models": [entry(m) for m in listed_models(state_of(request))]}


@router.post("/show", openapi_extra=openapi_body(ModelRequest))
async def show(request: Request) -> dict[str, object]:
    body = await read_body(request, ModelRequest)
    state = state_of(request)
    manifest = state.manifest(body.ref)
    checkpoint = inspect(manifest.folder)
    config, defaults = checkpoint.config, checkpoint.defaults
    sampler = {k: v for k, v in asdict(defaults).items() if k not in ("eos_token_ids", "pad_token_id")}
    return {
        "license": "",
        "modelfile": "",
        "template": "",
        "parameters": "\n".join(f"{name} {value}" for name, value in sampler.items()),
        "details": details(manifest),
        "model_info": {
            "general.architecture": "diffusion_gemma",
            "general.parameter_count": checkpoint.parameters[0],
            "diffusion_gemma.context_length": config.max_position_embeddings,
            "diffusion_gemma.canvas_length": config.canvas_length,
            **{f"dgemma.{label.replace(' ', '_')}": value for label, value in model_facts(manifest, checkpoint)},
        },
        "capabilities": ["completion", "thinking", *(["vision"] if checkpoint.vision is not None else [])],
        "modified_at": manifest.modified or None,
    }


@router.get("/ps")
async def ps(request: Request) -> dict[str, object]:
    """The resident model, or (dgemma's extension) the one loading with its progress; and (dgemma's extension) the
    queue and batching counters."""
    snap = state_of(request).worker.snapshot()
    models = []
    if snap.loading is not None:  # no expires_at yet: the keep-alive starts once the model is ready
        loading = snap.loading
        since = datetime.fromtimestamp(loading.since, timezone.utc).isoformat().replace("+00:00", "Z")
        phases = {phase: {"completed": done, "total": total} for phase, (done, total) in loading.phases.items()}
        models.append(
            entry(loading.manifest)
            | {
                "context_length": load_config(loading.manifest.folder)[0].max_position_embeddings,
                "loading": {"since": since, "phases": phases},
            }
        )
    if snap.manifest is not None:
        manifest = snap.manifest
        left = snap.expires_in
        expires = NEVER if math.isinf(left) else datetime.now(timezone.utc) + timedelta(seconds=left)
        size = manifest.size_bytes()
        models.append(
            entry(manifest)
            | {
                "expires_at": expires.isoformat().replace("+00:00", "Z"),
                "size_vram": size if snap.on_gpu else 0,
                "context_length": load_config(manifest.folder)[0].max_position_embeddings,
            }
        )
    counters = {k: v for k, v in asdict(snap).items() if k not in ("manifest", "loading", "expires_in", "on_gpu")}
    return {"models": models, "dgemma": counters}


@router.get("/version")
async def version_info() -> dict[str, str]:
    return {"version": version("dgemma")}


# -- pull ------------------------------------------------------------------------------------------


class PullStatus:
    """`dgemma pull`'s events as Ollama's progress objects."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}

    def __call__(self, event: pulling.Event) -> dict[str, object]:
        if isinstance(event, pulling.Resolved):
            return {"status": f"pulling {event.repo_id} at {event.commit[:12]} as '{event.ref}'"}
        if isinstance(event, pulling.Note):
            return {"status": event.text}
        if isinstance(event, pulling.Planned):
            return {"status": "pulling files", "total": event.total, "completed": event.present}
        if isinstance(event, pulling.FileStarted):
            self.sizes[event.path] = event.size
            return self._file(event.path, event.offset)
        if isinstance(event, pulling.FileProgress):
            return self._file(event.path, event.done)
        if isinstance(event, pulling.Verified):
            return {"status": f"verified {event.files} files, {event.tensors} tensors"}
        if isinstance(event, pulling.Pulled):
            return {"status": "success"}
        raise TypeError(f"no Ollama status for the pull event {event!r}")  # a new event type must be mapped here

    def _file(self, path: str, done: int) -> dict[str, object]:
        return {"status": f"pulling {path}", "digest": path, "total": self.sizes.get(path, 0), "completed": done}


def pull_status(exc: Exception) -> int:
    """A failed pull's status: what the hub said of the repo, or that it could not be reached."""
    from ..models import hub

    if isinstance(exc, hub.AccessDenied):
        return exc.status  # 401 or 403, as the hub said
    statuses = (
        (hub.NotOnHub, 404),
        (hub.HubUnreachable, 503),
        ((hub.HubFailed, pulling.PullError), 502),  # the hub failed, or what it sent cannot be used
        ((hub.HubError, CheckpointError, UnsupportedModelError), 400),  # a built-in name, a repo dgemma cannot run
    )
    return next((status for kinds, status in statuses if isinstance(exc, kinds)), status_of(exc))


@router.post("/pull", openapi_extra=openapi_body(PullRequest))
async def pull(request: Request) -> Response:
    from ..models.hub import target  # huggingface_hub loads only when a pull is asked for

    body = await read_body(request, PullRequest)
    if not body.ref:
        raise BadRequest("no model given")
    status = PullStatus()
    said: list[dict[str, object]] = []
    try:
        events = iterate_in_threadpool(pulling.pull_model(target(body.ref)))
        # Nothing is sent before the repo is resolved (its config.json fetched), so a missing, gated or
        # unreachable repo gets its status code rather than a 200 and an error line. Unstreamed: the last status.
        async for event in events:
            said = [*said, status(event)] if body.stream else [status(event)]
            if body.stream and isinstance(event, pulling.Resolved):
                break
        if not body.stream:
            return JSONResponse(said[-1])
    except DgemmaError as exc:
        return error_response(request, exc, pull_status(exc))

    async def progress() -> AsyncIterator[dict]:
        for shown in said:
            yield shown
        async for event in events:
            yield status(event)

    return ndjson(progress())
