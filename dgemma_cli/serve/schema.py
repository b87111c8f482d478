"""What the HTTP API accepts: request bodies (Ollama's and OpenAI's), generation options under their names,
keep-alive durations, and chat messages as the runtime's `Message`s. Every problem is a `BadRequest` (400)."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from dgemma_runtime import (
    INFILL_INSTRUCTION,
    OPTION_NAMES,
    DgemmaError,
    GenerationOptions,
    Message,
    PreparedPrompt,
    Tokenizer,
    VisionConfig,
    prepare_prompt,
)
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
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
Render = Callable[[Tokenizer], PreparedPrompt | list[int]]  # the prompt: its ids and images, or ids alone
DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,(.*)", re.DOTALL | re.IGNORECASE)


class BadRequest(DgemmaError):
    """The request cannot be served as written (400)."""


# -- bodies ----------------------------------------------------------------------------------------


def _not_bool(value: object) -> object:
    if isinstance(value, bool):  # pydantic would read `true` as 1: a one-token answer nobody asked for
        raise ValueError("a boolean is not a number")
    return value


NotBool = BeforeValidator(_not_bool)
# JSON integers as Ollama's Go server reads them: 64 bits at most (a torch seed is one), never a boolean.
Int64 = Annotated[int, Field(ge=-(2**63), lt=2**64), NotBool]  # Field first: the schema shows the range
KeepAlive = Annotated[float | str | None, NotBool]
# What the published schema says beyond the types; the routes check these themselves, with their own messages.
Role = Annotated[str, Field(json_schema_extra={"enum": sorted(ROLES)})]


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields of newer API versions: never refuse them


class OllamaMessage(Lenient):
    role: Role
    content: str = ""
    images: list[str] | None = None


class OllamaRequest(Lenient):
    model: str = ""
    stream: bool = True
    options: dict[str, Any] = {}
    keep_alive: KeepAlive = None
    think: bool | str | None = None
    frames: bool = False  # dgemma's extension: step events too
    infill: str | None = None  # dgemma's extension: a template whose holes the model fills (`dgemma run --infill`)
    format: str | dict[str, Any] | None = None  # Ollama's JSON mode or schema: refused (`no_structured_output`)


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
    seed: Int64 | None = None
    max_tokens: Int64 | None = None
    max_completion_tokens: Int64 | None = None
    n: Annotated[Int64, Field(json_schema_extra={"minimum": 1, "maximum": 1})] = 1
    think: bool | None = None
    reasoning_effort: str | None = None
    keep_alive: KeepAlive = None
    frames: bool = False
    infill: str | None = None
    response_format: dict[str, Any] | None = None  # only {"type": "text"} (`no_structured_output`)

    @property
    def thinks(self) -> bool:
        return bool(self.think) or self.reasoning_effort not in (None, "none", "minimal")


class OpenAIMessage(Lenient):
    role: Role
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """Content as a string, or its text parts joined; the image parts are `images`, others cannot be read."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if any(part.get("type") not in ("text", "image_url") for part in self.content):
            raise BadRequest("only text and image_url content parts are supported")
        return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")

    def images(self) -> tuple[bytes, ...]:
        """The image_url parts' images, in order (the prompt shows them before the text, as Gemma's template does)."""
        if not isinstance(self.content, list):
            return ()
        return tuple(data_url(part.get("image_url")) for part in self.content if part.get("type") == "image_url")


class ChatCompletionRequest(OpenAIRequest):
    messages: Annotated[list[OpenAIMessage], Field(json_schema_extra={"minItems": 1})]


class CompletionRequest(OpenAIRequest):
    prompt: Annotated[str | list[str], Field(json_schema_extra={"minLength": 1, "minItems": 1, "maxItems": 1})]

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise BadRequest("one prompt per request")
        return self.prompt[0]


def _json_int(text: str) -> int:
    # Checked before int(): thousands of digits would hit Python's int max-str-digits limit (a ValueError).
    if len(text) > 21 or not -(2**63) <= int(text) < 2**64:
        raise BadRequest(f"number {text[:24]}{'…' if len(text) > 24 else ''} does not fit in 64 bits")
    return int(text)


def _not_json(constant: str) -> float:
    raise BadRequest(f"malformed JSON: {constant} is not a JSON number")


async def read_body(request: Request, kind: type[Body]) -> Body:
    """The JSON body as `kind`; malformed JSON or a wrong field is a BadRequest naming what is wrong."""
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}", parse_int=_json_int, parse_constant=_not_json)
        json.dumps(data, ensure_ascii=False).encode()  # a lone surrogate ("\ud800") parses, but is no text
    except UnicodeEncodeError:
        raise BadRequest("malformed JSON: a string holds a lone UTF-16 surrogate") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadRequest(f"{where}: {first['msg']}") from None


def openapi_body(kind: type[BaseModel]) -> dict[str, Any]:
    """A route's `openapi_extra` for the body it reads with `read_body`: FastAPI documents typed parameters only.
    The nested models are inlined, so the schema stands alone (an empty body reads as `{}`: not required)."""
    schema = kind.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            return inline(defs[ref.rsplit("/", 1)[-1]]) if ref else {k: inline(v) for k, v in node.items()}
        return [inline(item) for item in node] if isinstance(node, list) else node

    return {"requestBody": {"content": {"application/json": {"schema": inline(schema)}}}}


# -- limits ----------------------------------------------------------------------------------------

MAX_BODY_BYTES = 16 * 2**20  # a long conversation's text many times over (images will need more)


async def capped_body(request: Request) -> None:
    """The routers' dependency: the body read here, up to MAX_BODY_BYTES, and kept for `request.body()`; a longer
    one is a 413, by its Content-Length or as it arrives, before any of it is parsed."""
    limit = f"{MAX_BODY_BYTES / 2**20:g} MiB ({MAX_BODY_BYTES} bytes)"
    too_large = HTTPException(413, f"the request body is larger than the server's limit of {limit}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    request._body = b"".join(chunks)  # Starlette's own cache: `body()` and `stream()` answer from it


# -- options ---------------------------------------------------------------------------------------


def no_structured_output(field: str, asked: bool) -> None:
    """JSON mode and JSON schemas are refused, not ignored: a client that asks for JSON must not get free text."""
    if asked:
        raise BadRequest(f"{field}: JSON output (a JSON mode or schema) is not supported for diffusion models yet")


def ollama_options(options: Mapping[str, object]) -> GenerationOptions:
    return GenerationOptions.from_mapping({k: v for k, v in options.items() if k not in OLLAMA_IGNORED})


def openai_options(body: OpenAIRequest) -> GenerationOptions:
    """max_tokens (or max_completion_tokens) and seed, plus any diffusion option given as an extra field."""
    extra = body.model_extra or {}
    known = {k: v for k, v in extra.items() if k in OPTION_NAMES}
    named = {"max_tokens": body.max_tokens, "max_completion_tokens": body.max_completion_tokens, "seed": body.seed}
    options = GenerationOptions.from_mapping(known | {k: v for k, v in named.items() if v is not None})
    return with_infill(options, body.infill, body.thinks)


def with_infill(options: GenerationOptions, infill: str | None, think: bool) -> GenerationOptions:
    """A request's options with its `infill` template, which thinking cannot precede: the canvas the model would
    think in starts as the template."""
    if infill is not None and think:
        raise BadRequest("infill writes the answer directly: it cannot be combined with think")
    return options.merged(infill=infill)


def infill_prompt(prompt: str, infill: str | None) -> str:
    """A plain prompt; with an infill template it is the instruction, INFILL_INSTRUCTION when left empty."""
    return (prompt or INFILL_INSTRUCTION) if infill is not None else prompt


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


def base64_image(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:  # binascii.Error, or characters outside ASCII
        raise BadRequest(f"{where}: not valid base64") from None


def ollama_images(images: list[str] | None, where: str) -> tuple[bytes, ...]:
    """Ollama's `images`: each a file's bytes in base64."""
    return tuple(base64_image(data, f"{where}[{i}]") for i, data in enumerate(images or ()))


def data_url(image_url: object) -> bytes:
    """OpenAI's image_url, `{"url": ...}` or the URL alone: a data URL only, since the server fetches nothing."""
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise BadRequest("image_url: a url is needed")
    if url.lower().startswith(("http://", "https://")):
        raise BadRequest("image_url: the server fetches no remote URLs; send the image as data:image/...;base64,...")
    found = DATA_URL.fullmatch(url)
    if found is None:
        raise BadRequest("image_url: only data URLs are taken, data:image/...;base64,...")
    return base64_image(found.group(1), "image_url")


def message(role: str, content: str, images: tuple[bytes, ...] = ()) -> Message:
    if role not in ROLES:
        raise BadRequest(f"unsupported message role '{role}' (use system, user or assistant)")
    return Message(role, content, images)


def chat_prompt(messages: list[Message], think: bool, vision: VisionConfig | None = None) -> Render:
    """`vision`: the model's, for messages with images (without one, they are refused as the model reads text)."""
    return lambda tokenizer: prepare_prompt(messages, tokenizer, vision, think)


def raw_prompt(text: str) -> Render:
    """Ollama's raw mode: the text is the whole prompt, no chat template around it."""
    return lambda tokenizer: tokenizer.encode(text)


def user_prompt(
    text: str, system: str | None, think: bool, images: tuple[bytes, ...] = (), vision: VisionConfig | None = None
) -> Render:
    """A plain prompt as `dgemma run` renders it: one user turn, after the system prompt if there is one."""
    return chat_prompt(([Message("system", system)] if system else []) + [Message("user", text, images)], think, vision)
