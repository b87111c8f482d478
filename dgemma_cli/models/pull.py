"""`dgemma pull`: fetch the files the runtime needs from one commit of a hub repo into the Hugging Face cache,
verify them, and store a manifest that points at the snapshot. Yields progress events and prints nothing.

config.json and the shard index come first (before the plan and its disk check), so a repo that is not a
DiffusionGemma fails before any weights are fetched, and only the shards the index names are fetched.

A file already in the cache (an earlier pull, `hf download`) counts only once its bytes hash to what the hub lists:
the sha256 for files stored in LFS (the weights), the git blob id for the rest. One that does not is removed and
downloaded again, so a re-pull repairs a file corrupted in place; hashing reads at disk speed, far faster than
any download. `verify` adds what loading only samples: every shared weight stored twice compared byte for byte.
Offline, nothing is hashed unless `verify` asks (then against the sha256 each blob is named by, with no way to
repair). `verify_model` is `dgemma show --verify`: the files against the sha256 their manifest records.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import shutil
import time
from collections.abc import Generator, Iterator
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
HASH_BLOCK = 1 << 24  # bytes hashed between progress reports
COPIES = "shared-weight copies"  # what `Checking` names while it compares them


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
class Checking(Note):
    """`done` of `size` bytes of a file on disk hashed (or of the shared-weight copies compared). A Note, so a
    consumer that knows only Notes still shows something true."""

    path: str
    size: int
    done: int


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
    copies: int | None = None  # shared weights stored twice, compared byte for byte (None: only sampled)


@dataclass(frozen=True)
class Pulled:
    manifest: store.Manifest
    downloaded: int
    seconds: float


Event = Resolved | Note | Checking | Planned | FileStarted | FileProgress | Verified | Pulled


# -- the pull --------------------------------------------------------------------------------------


def pull_model(
    goal: Target, cache_dir: Path | None = None, endpoint: str | None = None, verify: bool = False
) -> Iterator[Event]:
    """Pull `goal` and save its manifest; served from the cache alone when offline or the hub is unreachable."""
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    cache = RepoCache(Path(cache_dir or constants.HF_HUB_CACHE), goal.repo_id)
    if constants.is_offline_mode():
        yield from _from_cache(goal, cache, "HF_HUB_OFFLINE is set", "unset it to download", verify)
        return
    try:
        with hub_errors(goal, endpoint):
            info = repo_info(goal, endpoint)
    except HubUnreachable as exc:
        yield from _from_cache(goal, cache, str(exc), "check the connection", verify)
        return
    with hub_errors(goal, endpoint, gated=info.gated):
        yield from _Download(goal, cache, info, endpoint, verify).run()


def wanted(path: str) -> bool:
    """Top-level configs and tokenizer the runtime reads; weights are picked by `_weights`. Never GGUF or pickles."""
    return "/" not in path and (path in SMALL_FILES or fnmatch.fnmatch(path, QUANT_CONFIG))


class _Download:
    def __init__(self, goal: Target, cache: RepoCache, info: RepoInfo, endpoint: str, verify: bool) -> None:
        self.goal, self.cache, self.info, self.endpoint, self.verify = goal, cache, info, endpoint, verify
        self.snapshot = cache.snapshot(info.commit)
        self.headers = build_hf_headers()  # HF_TOKEN or the stored login
        self.sha256: dict[str, str] = {}  # of every file verified so far, cached or downloaded
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
        for file in files:  # before the plan, which counts a corrupt cached file as missing
            yield from self._check(file)
        yield self._plan(files)
        for file in files:
            yield from self._get(file)
        checkpoint = inspect(self.snapshot)
        copies = (yield from _copies_intact(checkpoint)) if self.verify else None
        yield Verified(files=len(files), tensors=len(checkpoint.tensors), hashes=True, copies=copies)
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

    def _check(self, file: RemoteFile) -> Iterator[Event]:
        """A file the cache holds at the right size is hashed against the hub's listing; one that does not match
        is removed from the snapshot and the blobs, so `_get` downloads it again."""
        commit, cache = self.info.commit, self.cache
        if file.path in self.sha256:
            return
        with cache.lock(file.etag):
            if not cache.adopt(commit, file.path, file.etag, file.size):
                return
            digest = Digest(git_size=None if file.sha256 else file.size)
            yield from _hash(cache.snapshot(commit) / file.path, file.size, digest, file.path)
            problem = _mismatch(file, digest)
            if problem is None:
                self.sha256[file.path] = digest.sha256.hexdigest()
                return
            (cache.snapshot(commit) / file.path).unlink()
            cache.blob(file.etag).unlink(missing_ok=True)
        yield Note(f"{file.path} in the cache is corrupted ({problem}): downloading it again")

    def _get(self, file: RemoteFile) -> Iterator[Event]:
        """Make the file part of the snapshot: from the cache when there and intact, else downloaded, verified and
        linked."""
        yield from self._check(file)
        if file.path in self.sha256:
            return
        commit, cache = self.info.commit, self.cache
        with cache.lock(file.etag):
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


def _from_cache(goal: Target, cache: RepoCache, reason: str, advice: str, verify: bool) -> Iterator[Event]:
    """Register a snapshot already in the Hugging Face cache (pulled before, or fetched by `hf download`). With
    `verify`, every file whose blob is named by its sha256 is hashed against that name, and the shared-weight copies
    are compared in full; a corrupt file fails the pull (repairing it needs the hub)."""
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
        raise HubUnreachable(  # the hub is out of reach and the cache has nothing: a pull can only wait
            f"{reason}, and '{goal.repo_id}' is not in the Hugging Face cache ({cache.cache_dir}): {advice}"
        ) from None
    yield Resolved(goal.repo_id, folder.name, goal.ref)
    yield Note(f"{reason}: using the cached snapshot")
    checkpoint = inspect(folder)
    paths = {p for p in folder.iterdir() if wanted(p.name)} | {checkpoint.tensors[n].path for n in checkpoint.tensors}
    copies = None
    if verify:
        named = sorted(p for p in paths if SHA256.match(p.resolve().name))
        for path in named:
            digest = Digest()
            yield from _hash(path, path.stat().st_size, digest, path.name)
            if digest.sha256.hexdigest() != path.resolve().name:
                raise PullError(
                    f"{path.name} in the cache is corrupted (sha256 {digest.sha256.hexdigest()[:16]}…, its blob is "
                    f"named {path.resolve().name[:16]}…): run '{goal.again}' online to download it again"
                )
        yield Note(f"hashed {len(named)} cached files: each matches the sha256 its blob is named by")
        copies = yield from _copies_intact(checkpoint)
    yield Verified(files=len(paths), tensors=len(checkpoint.tensors), hashes=False, copies=copies)
    files = [(p.name, p.stat().st_size, _sha256_of(p)) for p in paths]
    yield Pulled(_save(goal, checkpoint, folder.name, files), 0, 0.0)


def _hash(path: Path, size: int, digest: Digest, name: str) -> Iterator[Checking]:
    """Feed the file to `digest`, reporting progress under `name`."""
    yield Checking(f"checking {name}", name, size, 0)
    done = 0
    with path.open("rb") as held:
        while block := held.read(HASH_BLOCK):
            digest.update(block)
            done += len(block)
            yield Checking(f"checking {name}", name, size, done)


def _compare_copies(checkpoint: CheckpointInfo) -> Generator[Checking, None, tuple[int, list[str]]]:
    """Every shared weight stored twice, compared byte for byte by the runtime (loading compares samples): how many
    there are, and one line per copy that differs."""
    twice = checkpoint.shared_copies
    total, done, problems = sum(size for _, size in twice), 0, []
    yield Checking(f"checking {COPIES}", COPIES, total, 0)
    for name, size in twice:
        problem = checkpoint.copy_problem(name)
        if problem is not None:
            problems.append(problem)
        done += size
        yield Checking(f"checking {COPIES}", COPIES, total, done)
    return len(twice), problems


def _copies_intact(checkpoint: CheckpointInfo) -> Generator[Checking, None, int]:
    """`_compare_copies` for a pull: the first copy that differs fails it (the hub's own file is wrong)."""
    count, problems = yield from _compare_copies(checkpoint)
    if problems:
        raise CheckpointError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return count


@dataclass(frozen=True)
class Verification:
    """What `verify_model` found: one line per problem, and what it checked (for the all-clear line)."""

    problems: list[str]
    hashed: int  # files hashed against the sha256 their manifest records
    tensors: int
    copies: int  # shared weights stored twice, compared byte for byte


def verify_model(manifest: store.Manifest) -> Generator[Checking, None, Verification]:
    """`dgemma show --verify`: every file against the size and sha256 its manifest recorded when it was pulled,
    then the checkpoint as the runtime reads it (tensor names and shapes, shared-weight copies byte for byte)."""
    problems: list[str] = []
    repair = "; pulling the model again repairs it" if manifest.source.startswith("hf:") else ""
    for entry in manifest.files:
        name, path = entry["name"], manifest.folder / entry["name"]
        size = path.stat().st_size if path.is_file() else None
        if size != entry["size"]:
            found = "missing" if size is None else f"{size} bytes"
            problems.append(f"{name}: {found}, the manifest records {entry['size']} bytes{repair}")
            continue
        digest = Digest()
        yield from _hash(path, entry["size"], digest, name)
        if digest.sha256.hexdigest() != entry["sha256"]:
            got, recorded = digest.sha256.hexdigest()[:16], entry["sha256"][:16]
            problems.append(f"{name}: sha256 {got}…, the manifest records {recorded}…{repair}")
    try:
        checkpoint = inspect(manifest.folder)
    except DgemmaError as exc:
        return Verification([*problems, str(exc)], len(manifest.files), 0, 0)
    copies, differ = yield from _compare_copies(checkpoint)
    return Verification(problems + differ, len(manifest.files), len(checkpoint.tensors), copies)


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
