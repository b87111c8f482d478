"""A fake Hugging Face hub on 127.0.0.1, speaking what huggingface_hub 2.4 and `dgemma pull` ask of the real one:

- `GET /api/models/{org}/{repo}[/revision/{rev}]?blobs=True` (HfApi.model_info with files_metadata): `id`, `sha`,
  `gated`, `siblings` with `rfilename`, `size`, `blobId` and, for LFS files, `lfs {sha256, size, pointerSize}`;
- `HEAD`/`GET /{org}/{repo}/resolve/{rev}/{path}`: `ETag` (the sha256 for LFS files, else the git blob id),
  `X-Repo-Commit`, `Content-Length`, `X-Linked-Etag`/`X-Linked-Size` for LFS files, and Range requests (206 with
  `Content-Range`, 416 past the end);
- errors as the hub sends them: 404 with `X-Error-Code: RepoNotFound` / `RevisionNotFound` / `EntryNotFound`,
  401 with `X-Error-Code: GatedRepo` for a gated repo without the right token.

Switches for the tests: `corrupt` (paths served with a flipped byte), `drop_at` (path -> absolute offset at which
the connection is cut, every time), `rate` (bytes per second for file bodies), `ignore_range`; and what happened:
`served` (file-body bytes sent), `ranges` ((path, Range header or None) per file GET), `requests`.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_THRESHOLD = 100_000  # bytes; the hub stores big files (and every safetensors) in LFS
PIECE = 64 * 1024
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    files: dict[str, bytes]
    gated: bool = False
    commit: str = field(init=False)

    def __post_init__(self) -> None:
        listing = "".join(f"{path}:{git_blob_id(data)}\n" for path, data in sorted(self.files.items()))
        self.commit = hashlib.sha1(f"{self.repo_id}\n{listing}".encode()).hexdigest()

    @staticmethod
    def lfs(path: str, data: bytes) -> bool:
        return path.endswith(".safetensors") or len(data) > LFS_THRESHOLD

    def etag(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if self.lfs(path, data) else git_blob_id(data)

    def sibling(self, path: str) -> dict:
        data = self.files[path]
        entry = {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
        if self.lfs(path, data):
            entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.token = "hf_fake_token_for_tests"
        self.corrupt: set[str] = set()
        self.drop_at: dict[str, int] = {}
        self.rate: float | None = None
        self.ignore_range = False
        self.served = 0
        self.ranges: list[tuple[str, str | None]] = []
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_repo(self, repo_id: str, folder: Path, gated: bool = False, extra: dict[str, bytes] | None = None) -> Repo:
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()} | (extra or {})
        self.repos[repo_id] = Repo(repo_id, files, gated)
        return self.repos[repo_id]

    def file_requests(self) -> list[str]:
        """Paths of the files fetched with GET, in order."""
        return [path for path, _ in self.ranges]

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's client expects

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._route(body=True)

        def do_HEAD(self) -> None:
            self._route(body=False)

        def _route(self, body: bool) -> None:
            with hub.lock:
                hub.requests.append(f"{self.command} {self.path}")
            parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
            try:
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    revision = parts[5] if len(parts) == 6 and parts[4] == "revision" else "main"
                    self._model_info(f"{parts[2]}/{parts[3]}", revision)
                elif len(parts) >= 5 and parts[2] == "resolve":
                    self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), body)
                else:
                    self._error(404, "RepoNotFound", "Not found")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away (or was killed): nothing to answer

        def _repo(self, repo_id: str, revision: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
            elif revision not in ("main", repo.commit):
                self._error(404, "RevisionNotFound", "Invalid rev id")
                return None
            return repo

        def _model_info(self, repo_id: str, revision: str) -> None:
            repo = self._repo(repo_id, revision)
            if repo is None:
                return
            info = {
                "id": repo.repo_id,
                "sha": repo.commit,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "siblings": [repo.sibling(path) for path in sorted(repo.files)],
            }
            self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode(), True)

        def _resolve(self, repo_id: str, revision: str, path: str, body: bool) -> None:
            repo = self._repo(repo_id, revision)
            if repo is None:
                return
            if repo.gated and self.headers.get("Authorization") != f"Bearer {hub.token}":
                self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must be authenticated.")
                return
            if path not in repo.files:
                self._error(404, "EntryNotFound", "Entry not found")
                return
            data = repo.files[path]
            if path in hub.corrupt:
                flipped = bytearray(data)
                flipped[len(data) // 2] ^= 0xFF
                data = bytes(flipped)
            headers = {"ETag": f'"{repo.etag(path)}"', "X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
            if repo.lfs(path, data):
                headers |= {"X-Linked-Etag": f'"{repo.etag(path)}"', "X-Linked-Size": str(len(data))}
            asked = self.headers.get("Range")
            if body:
                with hub.lock:
                    hub.ranges.append((path, asked))
            start, status = 0, 200
            if asked and not hub.ignore_range:
                match = RANGE.match(asked)
                start = int(match.group(1)) if match else 0
                if start >= len(data):
                    self._send(416, headers | {"Content-Range": f"bytes */{len(data)}"}, b"", body)
                    return
                end = int(match.group(2)) + 1 if match and match.group(2) else len(data)
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
                data, status = data[start:end], 206
            cut = hub.drop_at.get(path)
            self._send(status, headers, data, body, cut=None if cut is None else max(cut - start, 0))

        def _error(self, status: int, code: str, message: str) -> None:
            payload = json.dumps({"error": message}).encode()
            headers = {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}
            self._send(status, headers, payload, self.command != "HEAD")

        def _send(self, status: int, headers: dict[str, str], data: bytes, body: bool, cut: int | None = None) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not body:
                return
            is_file = "ETag" in headers
            limit = len(data) if cut is None else min(cut, len(data))
            for offset in range(0, limit, PIECE):
                piece = data[offset : min(offset + PIECE, limit)]
                self.wfile.write(piece)
                if is_file:
                    with hub.lock:
                        hub.served += len(piece)
                    if hub.rate:
                        time.sleep(len(piece) / hub.rate)
            if limit < len(data):  # cut the connection mid-body, as a flaky network does
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

    return Handler
