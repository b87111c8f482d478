"""What the HTTP API accepts: request bodies (Ollama's and OpenAI's), generation options under their names,
keep-alive durations, and chat messages as the runtime's `Message`s. Every problem is a `BadRequest` (400)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from dgemma_runtime import OPTION_NAMES, DgemmaError, GenerationOptions, Message, Tokenizer
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request

# Ollama's own options that mean nothing to a diffusion sampler: accepted, so its clients work, and ignored.
OLLAMA_IGNORED = frozenset(
    (
        "numa",
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mmap",
        "use_mlock",
        "embedding_only",
        "num_thread",
        "num_keep",
        "top_k",
        "top_p",
        "min_p",
        "tfs_z",
        "typical_p",
        "repeat_last_n",
        "temperature",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "penalize_newline",
        "stop",
    )
)
ROLES = {"system", "developer", "user", "assistant", "model"}
DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

Body = TypeVar("Body", bound=BaseModel)
Render = Callable[[Tokenizer], list[int]]


class BadRequest(DgemmaError):
    """The request cannot be served as written (400)."""


# -- bodies ----------------------------------------------------------------------------------------


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields of newer API versions: never refuse them


class OllamaMessage(Lenient):
    role: str
    content: str = ""
    images: list[str] | None = None


class OllamaRequest(Lenient):
    model: str = ""
    stream: bool = True
    options: dict[str, Any] = {}
    keep_alive: float | str | None = None
    think: bool | str | None = None
    frames: bool = False  # dgemma's extension: step events too


class GenerateRequest(OllamaRequest):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    images: list[str] | None = None


class ChatRequest(OllamaRequest):
    messages: list[OllamaMessage] = []


class ModelRequest(Lenient):
    model: str = ""
    name: str = ""  # Ollama's older spelling

    @property
    def ref(self) -> str:
        return self.model or self.name


class PullRequest(ModelRequest):
    stream: bool = True


class StreamOptions(Lenient):
    include_usage: bool = False


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # the diffusion options ride along as extra fields

    model: str = ""
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int = 1
    think: bool | None = None
    reasoning_effort: str | None = None
    keep_alive: float | str | None = None
    frames: bool = False

    @property
    def thinks(self) -> bool:
        return bool(self.think) or self.reasoning_effort not in (None, "none", "minimal")


class OpenAIMessage(Lenient):
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """Content as a string, or its text parts joined; other parts (images, audio) cannot be read."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if any(part.get("type") != "text" for part in self.content):
            raise BadRequest("only text content is supported")
        return "".join(str(part.get("text", "")) for part in self.content)


class ChatCompletionRequest(OpenAIRequest):
    messages: list[OpenAIMessage]


class CompletionRequest(OpenAIRequest):
    prompt: str | list[str]

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise BadRequest("one prompt per request")
        return self.prompt[0]


async def read_body(request: Request, kind: type[Body]) -> Body:
    """The JSON body as `kind`; malformed JSON or a wrong field is a BadRequest naming what is wrong."""
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadRequest(f"{where}: {first['msg']}") from None


# -- options ---------------------------------------------------------------------------------------


def ollama_options(options: Mapping[str, object]) -> GenerationOptions:
    return GenerationOptions.from_mapping({k: v for k, v in options.items() if k not in OLLAMA_IGNORED})


def openai_options(body: OpenAIRequest) -> GenerationOptions:
    """max_tokens (or max_completion_tokens) and seed, plus any diffusion option given as an extra field."""
    extra = body.model_extra or {}
    known = {k: v for k, v in extra.items() if k in OPTION_NAMES}
    named = {"max_tokens": body.max_tokens, "max_completion_tokens": body.max_completion_tokens, "seed": body.seed}
    return GenerationOptions.from_mapping(known | {k: v for k, v in named.items() if v is not None})


def keep_alive_seconds(value: float | str | None, default: float) -> float:
    """Ollama's keep_alive: seconds as a number, or a duration ('5m', '1h30m', '0'); negative keeps it for good."""
    if value is None:
        return default
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = float(body)
        except ValueError:
            parts = DURATION.findall(body)
            if not parts or "".join(n + u for n, u in parts) != body:
                raise BadRequest(f"keep-alive '{value}' is not a duration like '5m', '1h30m' or -1") from None
            seconds = sum(float(n) * UNIT_SECONDS[u] for n, u in parts)
        value = sign * seconds
    if math.isnan(value):
        raise BadRequest("keep-alive is not a number")
    return math.inf if value < 0 else float(value)


# -- prompts ---------------------------------------------------------------------------------------


def message(role: str, content: str) -> Message:
    if role not in ROLES:
        raise BadRequest(f"unsupported message role '{role}' (use system, user or assistant)")
    return Message(role, content)


def chat_prompt(messages: list[Message], think: bool) -> Render:
    return lambda tokenizer: tokenizer.chat(messages, think=think)


def raw_prompt(text: str) -> Render:
    """Ollama's raw mode: the text is the whole prompt, no chat template around it."""
    return lambda tokenizer: tokenizer.encode(text)


def user_prompt(text: str, system: str | None, think: bool) -> Render:
    """A plain prompt as `dgemma run` renders it: one user turn, after the system prompt if there is one."""
    return chat_prompt(([Message("system", system)] if system else []) + [Message("user", text)], think)
