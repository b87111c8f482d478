"""`dgemma pull`: fetch the files the runtime needs from one commit of a hub repo into the Hugging Face cache,
verify them, and store a manifest that points at the snapshot. Yields progress events and prints nothing.

config.json and the shard index come first (before the plan and its disk check), so a repo that is not a
DiffusionGemma fails before any weights are fetched, and only the shards the index names are fetched.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dgemma_runtime import CheckpointError, CheckpointInfo, DgemmaError, detect_scheme, inspect, load_config
from huggingface_hub import constants, hf_hub_url, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from huggingface_hub.utils import build_hf_headers

from ..units import human
from . import store
from .cache import RepoCache
from .hub import HubUnreachable, RemoteFile, RepoInfo, Target, hub_errors, repo_info
from .transfer import Digest, Interrupted, fetch

INDEX = "model.safetensors.index.json"
SMALL_FILES = (
    "config.json",
    INDEX,
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)
QUANT_CONFIG = "*quant*config.json"  # hf_quant_config.json, quantization_config.json, quantize_config.json
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PullError(DgemmaError):
    pass


# -- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    repo_id: str
    commit: str
    ref: str  # the store name it will have


@dataclass(frozen=True)
class Note:
    text: str


@dataclass(frozen=True)
class Planned:
    total: int  # bytes of every file the model needs
    present: int  # of which already on disk: in the cache, or in partial files from an earlier pull


@dataclass(frozen=True)
class FileStarted:
    path: str
    size: int
    offset: int  # bytes kept from an earlier, interrupted pull


@dataclass(frozen=True)
class FileProgress:
    path: str
    done: int


@dataclass(frozen=True)
class Verified:
    files: int
    tensors: int
    hashes: bool  # sizes and sha256 checked against the hub (not when offline)


@dataclass(frozen=True)
class Pulled:
    manifest: store.Manifest
    downloaded: int
    seconds: float


Event = Resolved | Note | Planned | FileStarted | FileProgress | Verified | Pulled


# -- the pull --------------------------------------------------------------------------------------


def pull_model(goal: Target, cache_dir: Path | None = None, endpoint: str | None = None) -> Iterator[Event]:
    """Pull `goal` and save its manifest; served from the cache alone when offline or the hub is unreachable."""
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    cache = RepoCache(Path(cache_dir or constants.HF_HUB_CACHE), goal.repo_id)
    if constants.is_offline_mode():
        yield from _from_cache(goal, cache, "HF_HUB_OFFLINE is set", "unset it to download")
        return
    try:
        with hub_errors(goal, endpoint):
            info = repo_info(goal, endpoint)
    except HubUnreachable as exc:
        yield from _from_cache(goal, cache, str(exc), "check the connection")
        return
    with hub_errors(goal, endpoint, gated=info.gated):
        yield from _Download(goal, cache, info, endpoint).run()


def wanted(path: str) -> bool:
    """Top-level configs and tokenizer the runtime reads; weights are picked by `_weights`. Never GGUF or pickles."""
    return "/" not in path and (path in SMALL_FILES or fnmatch.fnmatch(path, QUANT_CONFIG))


class _Download:
    def __init__(self, goal: Target, cache: RepoCache, info: RepoInfo, endpoint: str) -> None:
        self.goal, self.cache, self.info, self.endpoint = goal, cache, info, endpoint
        self.snapshot = cache.snapshot(info.commit)
        self.headers = build_hf_headers()  # HF_TOKEN or the stored login
        self.sha256: dict[str, str] = {}
        self.downloaded = 0

    def run(self) -> Iterator[Event]:
        started = time.perf_counter()
        if "config.json" not in self.info.files:
            raise PullError(f"'{self.goal.repo_id}' has no config.json: it is not a model dgemma can run")
        self.snapshot.mkdir(parents=True, exist_ok=True)  # a valid cache entry from the start (`hf cache` scans)
        for path in ("config.json", INDEX):  # first, so a gated or missing repo fails before anything is shown
            if path in self.info.files:
                yield from self._get(self.info.files[path])
        yield Resolved(self.goal.repo_id, self.info.commit, self.goal.ref)
        load_config(self.snapshot)  # not a DiffusionGemma, or a quantization we cannot run: stop before the weights
        detect_scheme(self.snapshot)
        files = [f for p, f in sorted(self.info.files.items()) if wanted(p)] + self._weights()
        yield self._plan(files)
        for file in files:
            yield from self._get(file)
        checkpoint = inspect(self.snapshot)
        yield Verified(files=len(files), tensors=len(checkpoint.tensors), hashes=True)
        self.cache.write_ref(self.goal.revision or "main", self.info.commit)
        manifest = _save(
            self.goal, checkpoint, self.info.commit, [(f.path, f.size, self.sha256[f.path]) for f in files]
        )
        yield Pulled(manifest, self.downloaded, time.perf_counter() - started)

    def _weights(self) -> list[RemoteFile]:
        files = self.info.files
        if INDEX in files:
            try:
                names = sorted(set(json.loads((self.snapshot / INDEX).read_text())["weight_map"].values()))
            except (KeyError, AttributeError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"{INDEX}: malformed shard index ({exc})") from None
        else:
            names = ["model.safetensors"] if "model.safetensors" in files else []
        if not names:
            raise PullError(f"'{self.goal.repo_id}' has no safetensors weights (dgemma never loads GGUF or pickles)")
        missing = [n for n in names if n not in files or "/" in n]
        if missing:
            raise PullError(
                f"{INDEX} of '{self.goal.repo_id}' names files the repo does not have: {', '.join(missing)}"
            )
        return [files[n] for n in names]

    def _plan(self, files: list[RemoteFile]) -> Planned:
        """Count what is on disk already, and make sure the rest fits."""
        commit = self.info.commit
        present, need = 0, 0
        for f in files:
            if self.cache.has(commit, f.path, f.etag, f.size):
                present += f.size
            else:
                kept = _kept(self.cache.partial(f.etag), f.size)
                present, need = present + kept, need + f.size - kept
        check_space(self.cache.root, need)
        return Planned(total=sum(f.size for f in files), present=present)

    def _get(self, file: RemoteFile) -> Iterator[Event]:
        """Make the file part of the snapshot: from the cache when there, else downloaded, verified and linked."""
        commit, cache = self.info.commit, self.cache
        with cache.lock(file.etag):
            if cache.adopt(commit, file.path, file.etag, file.size):
                self.sha256[file.path] = file.sha256 or _sha256_of(cache.snapshot(commit) / file.path)
                return
            partial = cache.partial(file.etag)
            kept = _kept(partial, file.size)
            yield FileStarted(file.path, file.size, kept)
            digest = Digest(git_size=None if file.sha256 else file.size)
            url = hf_hub_url(self.goal.repo_id, file.path, revision=commit, endpoint=self.endpoint)
            try:
                for done in fetch(url, self.headers, partial, file.size, digest):
                    yield FileProgress(file.path, done)
            except Interrupted as exc:
                raise PullError(
                    f"download of {file.path} kept failing ({exc}); {human(exc.done)} of {human(file.size)} is kept: "
                    f"run '{self.goal.again}' to resume"
                ) from None
            problem = _mismatch(file, digest)
            if problem:
                partial.unlink()
                raise PullError(f"{file.path} arrived corrupted ({problem}) and was discarded: run '{self.goal.again}'")
            cache.add_blob(partial, file.etag)
            cache.link(commit, file.path, file.etag)
        self.sha256[file.path] = digest.sha256.hexdigest()
        self.downloaded += file.size - kept


def _mismatch(file: RemoteFile, digest: Digest) -> str | None:
    if file.sha256 and digest.sha256.hexdigest() != file.sha256:
        return f"sha256 {digest.sha256.hexdigest()[:16]}…, the hub lists {file.sha256[:16]}…"
    if digest.git is not None and digest.git.hexdigest() != file.blob_id:
        return f"git blob id {digest.git.hexdigest()[:16]}…, the hub lists {file.blob_id[:16]}…"
    return None


def check_space(folder: Path, need: int) -> None:
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if need > free:
        raise PullError(f"not enough disk space in {existing}: need {human(need)}, have {human(free)}")


def _from_cache(goal: Target, cache: RepoCache, reason: str, advice: str) -> Iterator[Event]:
    """Register a snapshot already in the Hugging Face cache (pulled before, or fetched by `hf download`)."""
    try:
        folder = Path(
            snapshot_download(
                goal.repo_id,
                revision=goal.revision,
                cache_dir=cache.cache_dir,
                local_files_only=True,
                allow_patterns=[*SMALL_FILES, QUANT_CONFIG, "*.safetensors"],
            )
        )
    except LocalEntryNotFoundError:
        raise PullError(
            f"{reason}, and '{goal.repo_id}' is not in the Hugging Face cache ({cache.cache_dir}): {advice}"
        ) from None
    yield Resolved(goal.repo_id, folder.name, goal.ref)
    yield Note(f"{reason}: using the cached snapshot")
    checkpoint = inspect(folder)
    paths = {p for p in folder.iterdir() if wanted(p.name)} | {checkpoint.tensors[n].path for n in checkpoint.tensors}
    yield Verified(files=len(paths), tensors=len(checkpoint.tensors), hashes=False)
    files = [(p.name, p.stat().st_size, _sha256_of(p)) for p in paths]
    yield Pulled(_save(goal, checkpoint, folder.name, files), 0, 0.0)


def _sha256_of(path: Path) -> str:
    """The blob name when huggingface_hub named it by its sha256 (LFS files), else hashed (small files)."""
    blob = path.resolve().name
    if SHA256.match(blob):
        return blob
    digest = hashlib.sha256()
    with path.open("rb") as held:
        while block := held.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _kept(partial: Path, size: int) -> int:
    """Bytes a partial file from an earlier pull contributes (none when it is longer than the file: not ours)."""
    kept = partial.stat().st_size if partial.exists() else 0
    return kept if kept <= size else 0


def _save(goal: Target, checkpoint: CheckpointInfo, commit: str, files: list[tuple[str, int, str]]) -> store.Manifest:
    manifest = store.Manifest(
        name=goal.name,
        tag=goal.tag,
        path=str(checkpoint.folder),
        source=f"hf:{goal.repo_id}",
        revision=commit,
        quantization=checkpoint.scheme.precision if checkpoint.scheme else "none",
        files=[{"name": name, "size": size, "sha256": sha} for name, size, sha in sorted(files)],
    )
    store.save(manifest)
    return manifest
