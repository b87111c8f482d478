"""The one thread that owns the model (mlx-lm's ResponseGenerator pattern): requests wait in a bounded queue,
each with its own response queue that `None` ends and exceptions travel through. Waiting requests that can share
a decoder forward run as one batch; events are routed back to their request by `row`.

One model is resident at a time: loaded on first use, unloaded after its keep-alive has passed with no request.
While it loads, the runtime's progress is recorded for /api/ps, and requests that arrive wait in the queue for it.

Every job's prompt is rendered and checked against the model's context before it waits (`prepare`), so a prompt
or an answer length that cannot fit is refused at once and never reaches a batch; a batch that fails anyway
(out of memory, say) is run again one request at a time, so only the culprit gets the error.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from dgemma_runtime import (
    CanvasEvent,
    DgemmaError,
    Engine,
    FinalEvent,
    GenerationDefaults,
    GenerationOptions,
    GenerationStats,
    LoadEvent,
    LoadFinished,
    LoadProgress,
    LoadStarted,
    OptionError,
    PreparedPrompt,
    ProgressCallback,
    ResolvedOptions,
    StepEvent,
    Tokenizer,
    VisionConfig,
    inspect,
    load_config,
    reclaim,
)

from ..models.store import Manifest

POLL_SECONDS = 0.25  # how often a waiting request checks that its client is still there
MAX_IDLE_WAIT_SECONDS = 3600.0


class QueueFull(DgemmaError):
    def __init__(self, size: int) -> None:
        super().__init__(f"the server is busy: {size} requests are already waiting; retry shortly")


class LoadCancelled(DgemmaError):
    def __init__(self, model: Manifest) -> None:
        super().__init__(f"the server stopped while '{model.ref}' was loading")


class Disconnected(Exception):
    """The client went away before its answer was complete."""


@dataclass(frozen=True)
class Started:
    """The request's generation begins (after its wait in the queue, and the model load it may have caused)."""

    load_seconds: float


@dataclass(frozen=True)
class Finished:
    stats: GenerationStats  # the whole batch's timings and totals; the counts below are this request's
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str  # "stop" (an end-of-turn token) or "length"


Item = Started | StepEvent | CanvasEvent | Finished


@dataclass(eq=False)
class Job:
    """One request. `render` turns the tokenizer into the prompt (its ids, or a PreparedPrompt with its images);
    None asks only to load (or, with keep-alive 0, unload) the model."""

    model: Manifest
    render: Callable[[Tokenizer], PreparedPrompt | list[int]] | None
    keep_alive: float  # seconds; inf keeps the model loaded, 0 unloads it after this request
    options: GenerationOptions = field(default_factory=GenerationOptions)
    resolved: ResolvedOptions | None = None  # against the model's defaults, then (`prepare`) its context
    frames: bool = False  # deliver step events too
    ids: list[int] | None = None  # the rendered prompt (`prepare`)
    image_prompt: PreparedPrompt | None = None  # the rendered prompt when it shows images: such a job runs alone
    began: bool = False  # `Started` was sent
    answered: bool = False  # text was sent: the job can no longer start over
    submitted: float = field(default_factory=time.perf_counter)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    _queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def prepare(self, tokenizer: Tokenizer, context: int, defaults: GenerationDefaults) -> None:
        """Render the prompt and resolve the options against it and the model's `context`: an OptionError names
        the limit; an answer length left open becomes what fits."""
        assert self.render is not None
        rendered = self.render(tokenizer)
        prompt = rendered if isinstance(rendered, PreparedPrompt) else PreparedPrompt(rendered)
        if not prompt.ids:
            raise OptionError("the prompt is empty")
        self.resolved = self.options.resolve(defaults, context, len(prompt.ids))
        self.ids = prompt.ids
        self.image_prompt = prompt if prompt.pixel_values is not None else None

    def put(self, item: Item | BaseException | None) -> None:
        """From the worker thread: hand one item to the request's event loop."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop closed under a server shutting down: nobody is listening
            self.cancel()

    async def items(self, disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[Item]:
        """What the worker sends, until the end. Polls `disconnected` while nothing arrives (a request that waits
        its turn, or a non-streaming one) and raises `Disconnected` when the client has gone."""
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), POLL_SECONDS)
            except asyncio.TimeoutError:
                if await disconnected():
                    raise Disconnected() from None
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


@functools.lru_cache(maxsize=4)
@functools.lru_cache(maxsize=4)  # parsing a 262k-entry tokenizer.json for every request would cost more than it checks
def _prompt_reader(folder: Path) -> tuple[Tokenizer, int] | None:
    """A model's tokenizer and context length, to check prompts before the model is loaded; None without one."""
    path = folder / "tokenizer.json"
    return (Tokenizer(path), load_config(folder)[0].max_position_embeddings) if path.exists() else None


@functools.lru_cache(maxsize=4)
def model_vision(folder: Path) -> VisionConfig | None:
    """A model's vision tower, from its files (nothing is loaded), for prompts with images; None: text only."""
    return inspect(folder).vision


def prepare(job: Job, defaults: GenerationDefaults) -> None:
    """Before a job is queued (`ServeState.start` calls this in a thread): its prompt rendered and checked, so a
    prompt or answer length that does not fit is a 400 at once. A model without a tokenizer fails later, in the
    worker."""
    reader = _prompt_reader(job.model.folder)
    if reader is not None:
        job.prepare(*reader, defaults)


def similar_lengths(shortest: int, longest: int, canvas: int) -> bool:
    """Whether prompts this far apart may share a batch. Rows are left-padded to the longest prompt and every
    denoising step attends over prompt and canvas, so a short prompt beside a long one pays for the long one (28x
    slower was seen). The rule: padding at most doubles any row's span, longest + canvas <= 2 (shortest + canvas),
    i.e. lengths within a factor of 2, or within a canvas of each other for short prompts."""
    return longest + canvas <= 2 * (shortest + canvas)


def can_share_batch(head: Job, other: Job) -> bool:
    """Whether `other`'s options let it run in `head`'s batch: the same, and the same answer length asked for
    (an open one is fitted to the batch's longest prompt when it runs); prompt lengths are `similar_lengths`'
    business. A seeded request runs alone, so its answer is the one `dgemma run --seed` gives; so does one with
    images (the engine takes one prompt's images at a time)."""
    if head.resolved is None or other.resolved is None or head.resolved.seed is not None:
        return False
    if head.image_prompt is not None or other.image_prompt is not None:
        return False
    return (
        other.model.folder == head.model.folder
        and other.options.max_new_tokens == head.options.max_new_tokens
        and replace(other.resolved, max_new_tokens=head.resolved.max_new_tokens) == head.resolved
    )


@dataclass
class Resident:
    manifest: Manifest
    engine: Engine
    expires: float = math.inf  # time.monotonic() after which it is unloaded


@dataclass(frozen=True)
class Loading:
    """A load in progress, as the runtime reports it; replaced (not changed) per event, so a snapshot holds one."""

    manifest: Manifest
    since: float  # time.time() the load began
    phases: dict[str, tuple[int, int]] = field(default_factory=dict)  # phase -> (bytes done, bytes it handles)
    finished: LoadFinished | None = None


Loader = Callable[[Manifest, ProgressCallback], Engine]  # the runtime's `load`, `progress` passed on


@dataclass(frozen=True)
class Snapshot:
    """What /api/ps reports: the resident model, the one loading, and the counters (for clients and tests alike)."""

    manifest: Manifest | None
    loading: Loading | None
    on_gpu: bool
    expires_in: float  # seconds; inf when it stays
    queued: int
    running: int
    batches: int
    largest_batch: int
    completed: int
    cancelled: int
    loads: int  # models loaded since the server started: a client can tell a resident model was reused


class Worker:
    def __init__(
        self,
        loader: Loader,
        max_queue: int = 16,
        max_batch: int = 8,
    ) -> None:
        self.loader, self.max_queue, self.max_batch = loader, max_queue, max_batch
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._resident: Resident | None = None
        self._loading: Loading | None = None
        self._stopped = False
        self._running = self._batches = self._largest = self._completed = self._cancelled = self._loads = 0
        self._thread = threading.Thread(target=self._loop, name="dgemma-model", daemon=True)

    # -- the request side ------------------------------------------------------------------------------

    def preload(self, manifest: Manifest, keep_alive: float) -> None:
        """Load before the thread starts (so a bad model fails `dgemma serve` itself)."""
        assert not self._thread.is_alive()
        self._resident = Resident(manifest, self._load(manifest)[0], time.monotonic() + keep_alive)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; a load in progress is cancelled at its next progress event (`_heard`)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(len(self._waiting))
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """The client is gone: drop the job if it still waits, else its rows stop being delivered."""
        with self._cond:
            if job.cancelled:
                return
            job.cancel()
            if job in self._waiting:
                self._waiting.remove(job)
                self._cancelled += 1

    def snapshot(self) -> Snapshot:
        with self._cond:
            resident = self._resident
            return Snapshot(
                manifest=resident.manifest if resident else None,
                loading=self._loading,
                on_gpu=resident is not None and resident.engine.device.type == "cuda",
                expires_in=max(0.0, resident.expires - time.monotonic()) if resident else 0.0,
                queued=len(self._waiting),
                running=self._running,
                batches=self._batches,
                largest_batch=self._largest,
                completed=self._completed,
                cancelled=self._cancelled,
                loads=self._loads,
            )

    # -- the model thread ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while (head := self._next()) is not None:
            try:
                if head.cancelled:
                    self._end([head])
                elif head.render is None:
                    self._load_only(head)
                else:
                    engine, load_seconds = self._engine_for(head.model)
                    batch = self._gather(head, engine)
                    if batch:
                        self._generate(engine, batch, load_seconds)
            except Exception as exc:  # a model that fails to load fails its request, not the server
                self._end([head], exc)

    def _next(self) -> Job | None:
        """The oldest waiting job; meanwhile, unload the model when its keep-alive runs out."""
        with self._cond:
            while not self._waiting and not self._stopped:
                resident = self._resident
                left = resident.expires - time.monotonic() if resident else math.inf
                if left <= 0:
                    self._unload()
                    continue
                # A keep-alive of years is a finite number too large for the lock's timeout: wake hourly instead.
                self._cond.wait(None if math.isinf(left) else min(left, MAX_IDLE_WAIT_SECONDS))
            return None if self._stopped else self._waiting.popleft()

    def _engine_for(self, model: Manifest) -> tuple[Engine, float]:
        """The resident engine when it is `model`, else `model` loaded in its place, and the seconds that took."""
        resident = self._resident
        if resident is not None and resident.manifest.folder == model.folder:
            return resident.engine, 0.0
        with self._cond:
            self._unload()  # one model at a time: free it before the next one loads
        engine, seconds = self._load(model)
        with self._cond:
            self._resident = Resident(model, engine)
        return engine, seconds

    def _load(self, model: Manifest) -> tuple[Engine, float]:
        """`model` loaded, its progress in /api/ps meanwhile; and the seconds the runtime says the load took."""
        with self._cond:
            self._loading = Loading(model, time.time())
            self._loads += 1
        try:
            engine = self.loader(model, self._heard)
        finally:
            with self._cond:
                loading, self._loading = self._loading, None
        assert loading is not None
        finished = loading.finished
        return engine, finished.seconds if finished else 0.0  # a loader that reports nothing took no time

    def _heard(self, event: LoadEvent) -> None:
        """The runtime's progress callback, on the loading thread. Raising stops the load (the runtime lets go of
        what it read), so a server that stops is not held up by a long load."""
        with self._cond:
            loading = self._loading
            assert loading is not None
            if self._stopped:
                raise LoadCancelled(loading.manifest)
            if isinstance(event, LoadStarted):
                self._loading = replace(loading, phases={phase: (0, total) for phase, total in event.phases.items()})
            elif isinstance(event, LoadProgress):
                total = loading.phases[event.phase][1]
                self._loading = replace(loading, phases=loading.phases | {event.phase: (event.bytes, total)})
            else:
                self._loading = replace(loading, finished=event)

    def _load_only(self, job: Job) -> None:
        """Ollama's empty request: load the model (or, with keep-alive 0, unload it if resident)."""
        load_seconds = 0.0
        if job.keep_alive > 0:
            _, load_seconds = self._engine_for(job.model)
        elif self._resident is None or self._resident.manifest.folder != job.model.folder:
            self._end([job])
            return
        job.put(Started(load_seconds))
        self._keep(job.keep_alive)
        self._end([job])

    def _gather(self, head: Job, engine: Engine) -> list[Job]:
        """`head` and the waiting jobs that can share its forwards (up to max_batch), in arrival order: the same
        options, and prompts of similar lengths (`similar_lengths`)."""
        if not self._render(head, engine):
            return []
        with self._cond:
            batch = [head]
            shortest = longest = len(head.ids or ())
            for job in list(self._waiting):
                if len(batch) == self.max_batch:
                    break
                if job.render is None or job.model.folder != head.model.folder or not self._render(job, engine):
                    continue
                length = len(job.ids or ())
                lengths = min(shortest, length), max(longest, length)
                if can_share_batch(head, job) and similar_lengths(*lengths, engine.config.canvas_length):
                    self._waiting.remove(job)
                    batch.append(job)
                    shortest, longest = lengths
            self._count(len(batch))
        return batch

    def _count(self, size: int) -> None:
        with self._cond:
            self._running = size
            self._batches += 1
            self._largest = max(self._largest, size)

    def _render(self, job: Job, engine: Engine) -> bool:
        """The job's prompt ids and fitted options (the routes prepare theirs before queuing); a prompt that cannot
        be rendered or does not fit fails its job alone."""
        if job.ids is None:
            try:
                assert engine.tokenizer is not None  # the loader refuses models without one
                job.prepare(engine.tokenizer, engine.config.max_position_embeddings, engine.defaults)
            except Exception as exc:
                with self._cond:
                    if job in self._waiting:
                        self._waiting.remove(job)
                self._end([job], exc)
                return False
        return True

    def _generate(self, engine: Engine, batch: list[Job], load_seconds: float) -> None:
        try:
            self._stream(engine, batch, load_seconds)
        except Exception as exc:
            # One request must not fail the others: those with no text yet run again, each alone; a request
            # that was alone, or has part of its answer already, gets the error.
            again = [job for job in batch if not job.answered and not job.cancelled] if len(batch) > 1 else []
            traceback.clear_frames(exc.__traceback__)  # the failed generation's tensors go before the retries
            if not again:
                self._keep(batch[-1].keep_alive)
            self._end([job for job in batch if job not in again], exc)
            for job in again:
                self._count(1)
                self._generate(engine, [job], 0.0)
            return
        self._end(batch)

    def _stream(self, engine: Engine, batch: list[Job], load_seconds: float) -> None:
        """Run one batch, each row's events to its job; raises what the engine raises."""
        for job in batch:
            if not job.began:
                job.began = True
                job.put(Started(load_seconds))
        # Every row's answer length fits the context beside its prompt; the least fits beside them all.
        fits = min(job.resolved.max_new_tokens for job in batch if job.resolved is not None)
        prompts = batch[0].image_prompt or [job.ids for job in batch]  # a job with images runs alone
        events = engine.stream(prompts, options=batch[0].options.merged(max_new_tokens=fits))
        finals: list[tuple[Job, Finished]] = []
        try:
            for event in events:
                if isinstance(event, FinalEvent):
                    for job, ids in zip(batch, event.token_ids, strict=True):
                        reason = "stop" if ids and ids[-1] in engine.defaults.eos_token_ids else "length"
                        finals.append((job, Finished(event.stats, len(job.ids or ()), len(ids), reason)))
                    continue
                job = batch[event.row]
                job.answered |= isinstance(event, CanvasEvent)
                if not job.cancelled and (job.frames or not isinstance(event, StepEvent)):
                    job.put(event)
                if all(job.cancelled for job in batch):
                    break  # nobody is listening: closing the stream stops the engine
        finally:
            events.close()
        self._keep(batch[-1].keep_alive)
        for job, finished in finals:  # after the keep-alive took effect: 'done' means the model is as asked
            job.put(finished)

    def _keep(self, keep_alive: float) -> None:
        """Ollama's rule: the latest request sets how long the model stays (0: unload now, inf: for good)."""
        with self._cond:
            if self._resident is None:
                return
            if keep_alive == 0:
                self._unload()
            else:
                self._resident.expires = time.monotonic() + keep_alive

    def _unload(self) -> None:
        """Called with the lock held. Drops the only reference to the engine, and the allocator's cache with it."""
        if self._resident is None:
            return
        self._resident = None
        reclaim()

    def _end(self, jobs: list[Job], error: Exception | None = None) -> None:
        with self._cond:
            self._running = 0
            for job in jobs:
                if job.cancelled:
                    self._cancelled += 1
                else:
                    self._completed += 1
        for job in jobs:
            if error is not None:
                job.put(error)
            job.put(None)
