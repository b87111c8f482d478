"""The one thread that owns the model (mlx-lm's ResponseGenerator pattern): requests wait in a bounded queue,
each with its own response queue that `None` ends and exceptions travel through. Waiting requests that can share
a decoder forward run as one batch; events are routed back to their request by `row`.

One model is resident at a time: loaded on first use, unloaded after its keep-alive has passed with no request.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from dgemma_runtime import (
    CanvasEvent,
    DgemmaError,
    Engine,
    FinalEvent,
    GenerationOptions,
    GenerationStats,
    ResolvedOptions,
    StepEvent,
    Tokenizer,
    reclaim,
)

from ..models.store import Manifest

POLL_SECONDS = 0.25  # how often a waiting request checks that its client is still there


class QueueFull(DgemmaError):
    def __init__(self, size: int) -> None:
        super().__init__(f"the server is busy: {size} requests are already waiting; retry shortly")


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
    """One request. `render` turns the tokenizer into prompt ids; None asks only to load (or, with keep-alive 0,
    unload) the model."""

    model: Manifest
    render: Callable[[Tokenizer], list[int]] | None
    keep_alive: float  # seconds; inf keeps the model loaded, 0 unloads it after this request
    options: GenerationOptions = field(default_factory=GenerationOptions)
    resolved: ResolvedOptions | None = None  # options against the model's defaults: the batching key
    frames: bool = False  # deliver step events too
    ids: list[int] | None = None
    submitted: float = field(default_factory=time.perf_counter)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    _queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

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


def can_share_batch(head: Job, other: Job) -> bool:
    """Whether `other` may run in `head`'s batch (prompts of any length: the engine left-pads them). A seeded
    request runs alone, so its answer is the one `dgemma run --seed` gives."""
    return (
        other.model.folder == head.model.folder
        and other.resolved == head.resolved
        and head.resolved is not None
        and head.resolved.seed is None
    )


@dataclass
class Resident:
    manifest: Manifest
    engine: Engine
    expires: float = math.inf  # time.monotonic() after which it is unloaded


@dataclass(frozen=True)
class Snapshot:
    """What /api/ps reports: the resident model and the counters (for clients and tests alike)."""

    manifest: Manifest | None
    on_gpu: bool
    expires_in: float  # seconds; inf when it stays
    queued: int
    running: int
    batches: int
    largest_batch: int
    completed: int
    cancelled: int


class Worker:
    def __init__(
        self,
        loader: Callable[[Manifest], Engine],
        max_queue: int = 16,
        max_batch: int = 8,
    ) -> None:
        self.loader, self.max_queue, self.max_batch = loader, max_queue, max_batch
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._resident: Resident | None = None
        self._stopped = False
        self._running = self._batches = self._largest = self._completed = self._cancelled = 0
        self._thread = threading.Thread(target=self._loop, name="dgemma-model", daemon=True)

    # -- the request side ------------------------------------------------------------------------------

    def preload(self, manifest: Manifest, keep_alive: float) -> None:
        """Load before the thread starts (so a bad model fails `dgemma serve` itself)."""
        assert not self._thread.is_alive()
        self._resident = Resident(manifest, self.loader(manifest), time.monotonic() + keep_alive)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
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
                on_gpu=resident is not None and resident.engine.device.type == "cuda",
                expires_in=max(0.0, resident.expires - time.monotonic()) if resident else 0.0,
                queued=len(self._waiting),
                running=self._running,
                batches=self._batches,
                largest_batch=self._largest,
                completed=self._completed,
                cancelled=self._cancelled,
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
                    batch = self._gather(head, engine.tokenizer)
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
                self._cond.wait(None if math.isinf(left) else left)
            return None if self._stopped else self._waiting.popleft()

    def _engine_for(self, model: Manifest) -> tuple[Engine, float]:
        """The resident engine when it is `model`, else `model` loaded in its place, and the seconds that took."""
        resident = self._resident
        if resident is not None and resident.manifest.folder == model.folder:
            return resident.engine, 0.0
        with self._cond:
            self._unload()  # one model at a time: free it before the next one loads
        started = time.perf_counter()
        engine = self.loader(model)
        with self._cond:
            self._resident = Resident(model, engine)
        return engine, time.perf_counter() - started

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

    def _gather(self, head: Job, tokenizer: Tokenizer | None) -> list[Job]:
        """`head` and the waiting jobs that can share its forwards (up to max_batch), in arrival order."""
        assert tokenizer is not None  # the loader refuses models without one
        if not self._render(head, tokenizer):
            return []
        with self._cond:
            batch = [head]
            for job in list(self._waiting):
                if len(batch) == self.max_batch:
                    break
                if job.render is None or job.model.folder != head.model.folder or not self._render(job, tokenizer):
                    continue
                if can_share_batch(head, job):
                    self._waiting.remove(job)
                    batch.append(job)
            self._running = len(batch)
            self._batches += 1
            self._largest = max(self._largest, len(batch))
        return batch

    def _render(self, job: Job, tokenizer: Tokenizer) -> bool:
        """The job's prompt ids (kept on it); a prompt that cannot be rendered fails its job alone."""
        if job.ids is None:
            try:
                job.ids = job.render(tokenizer)  # type: ignore[misc]
            except Exception as exc:
                with self._cond:
                    if job in self._waiting:
                        self._waiting.remove(job)
                self._end([job], exc)
                return False
        return True

    def _generate(self, engine: Engine, batch: list[Job], load_seconds: float) -> None:
        for job in batch:
            job.put(Started(load_seconds))
        events = engine.stream([job.ids for job in batch], options=batch[0].options)
        error: Exception | None = None
        finals: list[tuple[Job, Finished]] = []
        try:
            for event in events:
                if isinstance(event, FinalEvent):
                    for job, ids in zip(batch, event.token_ids, strict=True):
                        reason = "stop" if ids and ids[-1] in engine.defaults.eos_token_ids else "length"
                        finals.append((job, Finished(event.stats, len(job.ids or ()), len(ids), reason)))
                    continue
                job = batch[event.row]
                if not job.cancelled and (job.frames or not isinstance(event, StepEvent)):
                    job.put(event)
                if all(job.cancelled for job in batch):
                    break  # nobody is listening: closing the stream stops the engine
        except Exception as exc:  # travels to every request of the batch
            error = exc
        finally:
            events.close()
        self._keep(batch[-1].keep_alive)
        for job, finished in finals:  # after the keep-alive took effect: 'done' means the model is as asked
            job.put(finished)
        self._end(batch, error)

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
