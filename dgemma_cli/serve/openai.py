"""OpenAI's API under /v1: chat completions and completions (server-sent events when streaming, usage at the
end), and the model list. Thinking arrives as `reasoning_content`, as other local servers send it."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from datetime import datetime

from dgemma_runtime import CanvasEvent, StepEvent
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request

from ..models import store
from .schema import (
    BadRequest,
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIRequest,
    Render,
    capped_body,
    chat_prompt,
    infill_prompt,
    message,
    no_structured_output,
    openai_options,
    openapi_body,
    read_body,
    user_prompt,
)
from .shared import Transcript, listed_models, model_name, sse, state_of, step_frame, vision_of
from .worker import Finished, Item

router = APIRouter(prefix="/v1", dependencies=[Depends(capped_body)])


def created(manifest: store.Manifest) -> int:
    return int(datetime.fromisoformat(manifest.modified).timestamp()) if manifest.modified else 0


class Reply:
    """OpenAI's objects for one request: a chunk per finished canvas, or one completion at the end."""

    def __init__(self, model: str, chat: bool, include_usage: bool) -> None:
        self.model, self.chat, self.include_usage = model, chat, include_usage
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.transcript = Transcript()

    def _object(self, choices: list[dict], chunk: bool) -> dict[str, object]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def _choice(self, answer: str, thinking: str, finish: str | None, chunk: bool) -> dict[str, object]:
        if not self.chat:
            return {"index": 0, "text": answer, "finish_reason": finish, "logprobs": None}
        # The closing chunk only says why it stopped.
        said: dict[str, object] = {} if chunk and finish else {"role": "assistant", "content": answer}
        if thinking:
            said["reasoning_content"] = thinking
        return {"index": 0, "delta" if chunk else "message": said, "finish_reason": finish, "logprobs": None}

    @staticmethod
    def _usage(finished: Finished) -> dict[str, int]:
        prompt, completion = finished.prompt_tokens, finished.generated_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def chunks(self, items: AsyncIterator[Item]) -> AsyncIterator[dict]:
        async for item in items:
            if isinstance(item, StepEvent):
                yield step_frame(item)
            elif isinstance(item, CanvasEvent):
                yield self._object([self._choice(*self.transcript.add(item), None, chunk=True)], chunk=True)
            elif isinstance(item, Finished):
                yield self._object([self._choice("", "", item.finish_reason, chunk=True)], chunk=True)
                if self.include_usage:  # OpenAI's rule: a last chunk with no choices carries the usage
                    yield self._object([], chunk=True) | {"usage": self._usage(item)}

    async def whole(self, items: AsyncIterator[Item]) -> dict[str, object]:
        finished = await self.transcript.read_all(items)
        choice = self._choice(self.transcript.answer, self.transcript.thinking, finished.finish_reason, chunk=False)
        return self._object([choice], chunk=False) | {"usage": self._usage(finished)}


async def respond(request: Request, body: OpenAIRequest, render: Render, chat: bool) -> Response:
    if body.n != 1:
        raise BadRequest("n: only one choice per request")
    text = body.response_format in (None, {"type": "text"})
    no_structured_output("response_format", not text)
    state = state_of(request)
    job = state.job(body.model, body.keep_alive, render, openai_options(body), body.frames and body.stream)
    _, items = await state.start(request, job)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    reply = Reply(body.model or job.model.ref, chat, include_usage)
    if body.stream:
        return sse(reply.chunks(items))
    return JSONResponse(await reply.whole(items))


@router.post("/chat/completions", openapi_extra=openapi_body(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    body = await read_body(request, ChatCompletionRequest)
    messages = [message(m.role, m.text(), m.images()) for m in body.messages]
    if not messages:
        raise BadRequest("messages: at least one message is needed")
    vision = await vision_of(request, body.model) if any(m.images for m in messages) else None
    return await respond(request, body, chat_prompt(messages, body.thinks, vision), chat=True)


@router.post("/completions", openapi_extra=openapi_body(CompletionRequest))
async def completions(request: Request) -> Response:
    body = await read_body(request, CompletionRequest)
    text = infill_prompt(body.text(), body.infill)
    if not text:
        raise BadRequest("prompt: empty")
    return await respond(request, body, user_prompt(text, None, body.thinks), chat=False)


@router.get("/models")
async def models(request: Request) -> dict[str, object]:
    listed = [
        {"id": model_name(m), "object": "model", "created": created(m), "owned_by": "dgemma"}
        for m in listed_models(state_of(request))
    ]
    return {"object": "list", "data": listed}
