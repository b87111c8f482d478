"""Download one file over HTTP into a partial file that survives any interruption, hashing every byte it holds.

A partial file left by an earlier run is re-hashed and continued with a Range request; a connection that drops
mid-file is resumed at once, and given up (keeping the bytes) only after attempts that bring nothing new.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
from huggingface_hub import constants
from huggingface_hub.utils import get_session, hf_raise_for_status

REPORT_EVERY = 1 << 20  # bytes between progress reports
RETRY_WAITS = (1.0, 1.0)  # seconds before each retry that follows an attempt which brought no new bytes
BUSY = frozenset({408, 429, 500, 502, 503, 504})
CONTENT_RANGE = re.compile(r"^bytes (\d+)-")


class Digest:
    """sha256 of a file, and its git blob id when that is how the hub names it (files not stored in LFS)."""

    def __init__(self, git_size: int | None = None) -> None:
        self._git_size = git_size
        self.reset()

    def reset(self) -> None:
        self.sha256 = hashlib.sha256()
        self.git = (
            None if self._git_size is None else hashlib.sha1(b"blob %d\0" % self._git_size, usedforsecurity=False)
        )

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)


class Interrupted(Exception):
    """The server or the network kept failing; `done` bytes are kept in the partial file."""

    def __init__(self, done: int, reason: str) -> None:
        super().__init__(reason)
        self.done = done


class _Retry(Exception):
    """An attempt ended early in a way a new attempt may fix."""


class _Partial:
    """The partial file on disk and the digest of exactly the bytes it holds."""

    def __init__(self, path: Path, size: int, digest: Digest) -> None:
        self.path, self.digest = path, digest
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > size:
            path.unlink()  # not the file we expect: start over
        self.size = 0
        if path.exists():
            with path.open("rb") as held:
                while block := held.read(REPORT_EVERY):
                    digest.update(block)
                    self.size += len(block)

    def restart(self) -> None:
        self.path.write_bytes(b"")
        self.digest.reset()
        self.size = 0


def fetch(url: str, headers: dict[str, str], path: Path, size: int, digest: Digest) -> Iterator[int]:
    """Make `path` hold the `size` bytes at `url`; yields the bytes held after each stretch of progress."""
    part = _Partial(path, size, digest)
    failures = 0
    while part.size < size:
        before = part.size
        try:
            yield from _attempt(url, headers, part, size)
        except (httpx2.TransportError, _Retry) as exc:
            if part.size > before:
                failures = 0
                continue
            failures += 1
            if failures > len(RETRY_WAITS):
                raise Interrupted(part.size, str(exc) or type(exc).__name__) from None
            time.sleep(RETRY_WAITS[failures - 1])


def _attempt(url: str, headers: dict[str, str], part: _Partial, size: int) -> Iterator[int]:
    asked = {**headers, "Accept-Encoding": "identity"}  # byte offsets must be those of the file itself
    if part.size:
        asked["Range"] = f"bytes={part.size}-"
    timeout = constants.HF_HUB_DOWNLOAD_TIMEOUT
    with get_session().stream("GET", url, headers=asked, timeout=timeout) as response:
        if response.status_code in BUSY:
            raise _Retry(f"the server answered {response.status_code}")
        hf_raise_for_status(response)
        if response.status_code == 206:
            start = CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not start or int(start.group(1)) != part.size:
                part.restart()
                raise _Retry("the server sent a different range than asked for")
        elif part.size:
            part.restart()  # the server ignored the Range header and sends the whole file
        reported = part.size
        with part.path.open("ab", buffering=0) as out:  # unbuffered: a killed process keeps every byte it got
            for piece in response.iter_bytes():
                piece = piece[: size - part.size]  # more than the hub listed is wrong anyway: the hash will say
                out.write(piece)
                part.digest.update(piece)
                part.size += len(piece)
                if part.size - reported >= REPORT_EVERY or part.size == size:
                    reported = part.size
                    yield part.size
                if part.size == size:
                    break
    if part.size < size:
        raise _Retry("the connection closed early")
