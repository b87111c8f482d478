"""Reading checkpoint bytes fast: a few threads ahead of the loop that builds the weights, vectored reads straight
into the buffers that become stacked weights, and hints that let the kernel start on the disk early.

A load either keeps a tensor as a map of the file (its bytes are then only brought into the page cache here, with
no copy) or builds it from many stored pieces (experts stored one by one: each piece is read into its place).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError
from .loading import LoadReporter
from .quantization import SAFETENSORS_DTYPES, TensorInfo

Span = tuple[Path, int, int]  # (file, start, end) in bytes
Stacks = dict[str, torch.Tensor]  # role -> its tensors of every expert and piece, one after another

READ_WORKERS = 4  # threads reading ahead of the weights being built: a disk serves several reads at once
READ_AHEAD_BYTES = 1 << 30  # read but not yet used, at most (more only for the one weight being waited for)
READ_CHUNK = 8 << 20  # bytes per read call at most: progress and Ctrl-C are heard in between


def advise_reads(spans: Iterable[Span]) -> None:
    """Ask the kernel to start reading these (file, start, end) ranges into the page cache, without waiting.
    Only a hint: where it is not offered (Windows, macOS) the reads simply happen when asked."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path, group in itertools.groupby(spans, key=lambda span: span[0]):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # the read itself will say what is wrong
        try:
            for _, start, end in group:
                os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def advise_first_bytes(folder: Path) -> None:
    """Before the headers are even read: the first READ_AHEAD_BYTES of the safetensors files, in the order a load
    reads them, start coming into the page cache."""
    spans, left = [], READ_AHEAD_BYTES
    for path in sorted(folder.glob("*.safetensors")):
        if left <= 0:
            break
        size = min(path.stat().st_size, left)
        spans.append((path, 0, size))
        left -= size
    advise_reads(spans)


@dataclass(frozen=True)
class UnitReads:
    """What one unit reads: the byte ranges of its tensors, and per stacked role the tensors read into one new
    buffer. Without stacks, the ranges are read only into the page cache, to be mapped from there."""

    spans: list[Span]
    stacks: dict[str, list[TensorInfo]]
    tensors: int

    @property
    def nbytes(self) -> int:
        return sum(end - start for _, start, end in self.spans)

    def advise(self) -> None:
        """Tell the kernel these bytes are wanted soon: it starts reading them while the threads are busy."""
        advise_reads(self.spans)


class ReadAhead:
    """Reads each unit's bytes, in a few threads, ahead of the loop that builds the weights. Mapped tensors are
    then found in the page cache, and stacked ones already in place, while the disk stays busy as the loop
    converts, quantizes or moves weights. At most READ_AHEAD_BYTES are read ahead of the loop."""

    def __init__(self, units: list[UnitReads], report: LoadReporter) -> None:
        self.units, self.report = units, report
        self.sizes = [unit.nbytes for unit in units]
        self.pool = ThreadPoolExecutor(READ_WORKERS, thread_name_prefix="dgemma-read") if READ_WORKERS else None
        self.pending: dict[int, Future[Stacks]] = {}  # unit -> its read, until the loop takes it
        self.submitted = 0  # units
        self.ahead = 0  # bytes submitted and not yet taken
        self.lock = threading.Lock()
        self.read_bytes = self.read_tensors = 0
        self.stopped = False
        self.buffers = threading.local()
        self.devnull = os.open(os.devnull, os.O_WRONLY)
        self.sendfile = hasattr(os, "sendfile")  # until the OS refuses it

    def wait_for(self, i: int) -> Stacks:
        """Unit `i`'s stacked tensors, once it has been read (units are taken in order), reporting the reads
        meanwhile."""
        if self.pool is None:
            stacks = self._read(i)
        else:
            while self.submitted < len(self.units) and (self.submitted <= i or self.ahead < READ_AHEAD_BYTES):
                self.units[self.submitted].advise()
                self.pending[self.submitted] = self.pool.submit(self._read, self.submitted)
                self.ahead += self.sizes[self.submitted]
                self.submitted += 1
            while not wait([self.pending[i]], timeout=0.1).done:
                self._report()
            stacks = self.pending.pop(i).result()  # raises what the read raised
            self.ahead -= self.sizes[i]
        self._report()
        return stacks

    def _report(self) -> None:
        with self.lock:
            done = self.read_bytes, self.read_tensors
        self.report.set("read", *done)

    def _read(self, i: int) -> Stacks:
        """Unit `i`'s stacks, read into new buffers; or, for a unit without any, its bytes into the page cache."""
        unit = self.units[i]
        stacks: Stacks = {}
        targets: list[tuple[Path, int, memoryview]] = []  # (file, offset, where its bytes go)
        for role, infos in unit.stacks.items():
            dtype = SAFETENSORS_DTYPES[infos[0].dtype]
            stacks[role] = torch.empty(sum(info.nbytes for info in infos) // dtype.itemsize, dtype=dtype)
            into, at = memoryview(stacks[role].view(torch.uint8).numpy()), 0
            for info in infos:
                targets.append((info.path, info.offset, into[at : at + info.nbytes]))
                at += info.nbytes
        targets.sort(key=lambda target: target[:2])  # through each file forwards
        cached = [] if stacks else unit.spans
        for path in sorted({target[0] for target in targets} | {span[0] for span in cached}):
            with self._opened(path) as fd:
                for offset, views in _runs(target for target in targets if target[0] == path):
                    self._fill(path, fd, views, offset)
                for _, start, end in (span for span in cached if span[0] == path):
                    self._cache(path, fd, start, end)
        with self.lock:
            self.read_tensors += unit.tensors
        return stacks

    @contextmanager
    def _opened(self, path: Path) -> Iterator[int]:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                yield fd
            finally:
                os.close(fd)
        except OSError as exc:
            raise CheckpointError(f"{path.name}: cannot read ({exc})") from None

    def _fill(self, path: Path, fd: int, views: list[memoryview], offset: int) -> None:
        """Fill `views` with the file's bytes from `offset` on, one system call for as many as it takes."""
        first = 0
        while first < len(views) and not self.stopped:
            got = _preadv(fd, views[first:], offset)
            self._count(path, got)
            offset += got
            while first < len(views) and got >= len(views[first]):
                got -= len(views[first])
                first += 1
            if got:
                views[first] = views[first][got:]

    def _cache(self, path: Path, fd: int, start: int, end: int) -> None:
        """Bring bytes [start, end) of the file into the page cache. Sent to /dev/null, the kernel reads them
        without copying them anywhere (pages already cached cost next to nothing); where sending to a file is not
        offered (macOS sends to sockets only), they are read through a reused buffer."""
        while start < end and not self.stopped:
            count = min(READ_CHUNK, end - start)
            got = None
            if self.sendfile:
                try:
                    got = os.sendfile(self.devnull, fd, start, count)
                except OSError:
                    self.sendfile = False  # a read error proper comes back from the read below
            if got is None:
                got = _preadv(fd, [self._chunk()[:count]], start)
            self._count(path, got)
            start += got

    def _count(self, path: Path, got: int) -> None:
        if not got:
            raise CheckpointError(f"{path.name}: ends before its tensors do")
        with self.lock:
            self.read_bytes += got

    def _chunk(self) -> memoryview:
        """This thread's buffer for bytes read only into the page cache."""
        if not hasattr(self.buffers, "chunk"):
            self.buffers.chunk = memoryview(bytearray(READ_CHUNK))
        return self.buffers.chunk

    def close(self) -> None:
        self.stopped = True
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        os.close(self.devnull)
        self.pending.clear()  # what was read ahead and not yet taken goes with it


IOV_MAX = 1024  # buffers per vectored read: Linux's and macOS's limit


def _runs(targets: Iterable[tuple[Path, int, memoryview]]) -> Iterator[tuple[int, list[memoryview]]]:
    """(offset, buffers) for each stretch of the file read in one call: tensors that follow one another there
    go to their places in one vectored read (of at most READ_CHUNK bytes, so that progress and Ctrl-C are
    heard in between)."""
    offset, views, end = 0, [], -1
    for _, start, view in targets:
        if start != end or len(views) == IOV_MAX or end + len(view) - offset > READ_CHUNK:
            if views:
                yield offset, views
            offset, views = start, []
        views.append(view)
        end = start + len(view)
    if views:
        yield offset, views


def _preadv(fd: int, views: list[memoryview], offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, views, offset)
    with open(fd, "rb", buffering=0, closefd=False) as file:  # Windows has no vectored reads: a buffer per call
        file.seek(offset)
        return file.readinto(views[0])
