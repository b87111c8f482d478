"""Where models live: names <-> folders, manifests, and the facts `list` and `show` print.

A name is `name[:tag]` (tag `latest` when omitted); a Hugging Face repo `[hf.co/]org/repo[:revision]` names the model
pulled from it (`org--repo`, tagged with its revision). Each stored model has a manifest,
`$DGEMMA_MODELS/manifests/<name>/<tag>.json`, that points at a Hugging Face-format folder (usually a snapshot
in the Hugging Face cache). Built-in models ship inside the package and need no manifest.

How long the last load of a model folder took is kept beside the manifests, `$DGEMMA_MODELS/loads/<key>.json` (one
small file per folder, so built-in models and folders named on the command line have one too), for `show`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import platformdirs
from dgemma_runtime import DgemmaError, LoadFinished

BUILTIN = {"dgemma-tiny": "builtin/dgemma-tiny"}  # name -> folder inside the dgemma_cli package
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HUB_PREFIX = re.compile(r"^(?:https?://)?(?:huggingface\.co|hf\.co)/")
HUB_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class ModelNotFound(DgemmaError):
    def __init__(self, name: str, hint: str = "") -> None:
        hint = hint or f"see 'dgemma list', or 'dgemma pull {name}'"
        super().__init__(f"model '{name}' not found — {hint}")


class StoreError(DgemmaError):
    pass


@dataclass
class Manifest:
    name: str
    tag: str
    path: str  # the model folder (config.json, safetensors, tokenizer.json)
    source: str  # "builtin", "hf:org/repo", or "local"
    revision: str = ""
    format: str = "safetensors"
    quantization: str = "none"
    files: list[dict] = field(default_factory=list)  # {"name", "size", "sha256"}
    modified: str = ""  # ISO time the model was stored

    @property
    def ref(self) -> str:
        return self.name if self.tag == "latest" else f"{self.name}:{self.tag}"

    @property
    def builtin(self) -> bool:
        return self.source == "builtin"

    @property
    def folder(self) -> Path:
        return Path(self.path)

    @property
    def digest(self) -> str:
        """A stable identity of the stored model (Ollama's is its manifest's hash); `list` shows 12 characters."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def size_bytes(self) -> int:
        if self.files:
            return sum(int(f["size"]) for f in self.files)
        return sum(p.stat().st_size for p in self.folder.glob("*") if p.is_file())


def models_dir() -> Path:
    return Path(os.environ.get("DGEMMA_MODELS") or platformdirs.user_data_path("dgemma") / "models")


def parse_name(ref: str) -> tuple[str, str]:
    """`name[:tag]` -> (name, tag), refusing anything that could leave the store."""
    name, _, tag = ref.strip().partition(":")
    tag = tag or "latest"
    if not NAME.match(name) or not TAG.match(tag) or ".." in name or ".." in tag:
        raise StoreError(f"invalid model name '{ref}': use lowercase letters, digits, '.', '_' or '-', and ':tag'")
    return name, tag


def hub_ref(ref: str) -> tuple[str, str | None] | None:
    """`[hf.co/]org/repo[:revision]` -> (repo id, revision or None); None when `ref` is not a hub repo."""
    repo, _, revision = HUB_PREFIX.sub("", ref.strip().rstrip("/")).partition(":")
    return (repo, revision or None) if HUB_REPO.match(repo) else None


def _sanitised(text: str, allowed: str) -> str:
    cleaned = re.sub(r"\.{2,}", ".", re.sub(f"[^{allowed}]+", "-", text))
    return cleaned.lstrip("-._")[:64]


def hub_name(repo_id: str, revision: str | None) -> tuple[str, str]:
    """The store name of a hub repo: `Org/Repo` -> `org--repo`, tagged with its revision (`latest` for main)."""
    name = _sanitised(repo_id.lower().replace("/", "--"), "a-z0-9._-")
    tag = "latest" if revision in (None, "main") else _sanitised(revision, "A-Za-z0-9._-")
    return parse_name(f"{name}:{tag}")


def _key(ref: str) -> tuple[str, str]:
    hub = hub_ref(ref)
    return hub_name(*hub) if hub else parse_name(ref)


def _manifest_path(name: str, tag: str) -> Path:
    return models_dir() / "manifests" / name / f"{tag}.json"


def _builtin(name: str) -> Manifest:
    folder = Path(str(resources.files("dgemma_cli").joinpath(BUILTIN[name])))
    config = folder / "config.json"
    modified = datetime.fromtimestamp(config.stat().st_mtime, timezone.utc).isoformat() if config.exists() else ""
    return Manifest(name=name, tag="latest", path=str(folder), source="builtin", modified=modified)


def _read(path: Path) -> Manifest:
    try:
        manifest = Manifest(**json.loads(path.read_text()))
        # The shape every reader assumes, checked once here: text fields, files with sizes, an ISO time.
        if not all(isinstance(getattr(manifest, f.name), str) for f in fields(Manifest) if f.name != "files"):
            raise TypeError("a field that should be text is not")
        for listed in manifest.files:
            int(listed["size"])
        if manifest.modified:
            datetime.fromisoformat(manifest.modified)
    except (OSError, ValueError, TypeError, KeyError) as exc:  # ValueError: bad JSON, UTF-8 or time
        raise StoreError(f"{path}: unreadable manifest ({exc})") from None
    return manifest


def resolve(ref: str) -> Manifest:
    """A store name, a pulled hub repo (`org/repo`), or a path to a Hugging Face-format folder."""
    folder = Path(ref).expanduser()
    if folder.is_dir():
        return Manifest(name=folder.name, tag="latest", path=str(folder.resolve()), source="local")
    return lookup(ref)


def lookup(ref: str) -> Manifest:
    """A store name or a pulled hub repo, never a folder: for names that come from the network."""
    if ("/" in ref or ref.startswith(".")) and not hub_ref(ref):
        raise ModelNotFound(ref, f"no such folder: {Path(ref).expanduser().absolute()}")  # nothing to pull either
    name, tag = _key(ref)
    if name in BUILTIN and tag == "latest":
        return _builtin(name)
    path = _manifest_path(name, tag)
    if not path.exists():
        raise ModelNotFound(ref)
    manifest = _read(path)
    if not manifest.folder.is_dir():  # deleted behind the store's back (say, by `hf cache delete`)
        raise ModelNotFound(ref, f"its folder {manifest.path} is gone; 'dgemma pull {ref}' fetches it again")
    return manifest


def list_models(skipped: Callable[[str], None] | None = None) -> list[Manifest]:
    """The built-in and stored models. An entry that cannot be listed (an unreadable manifest, a model folder that
    is gone) is left out and `skipped` is told why: one bad entry must not hide the others."""
    found = [_builtin(name) for name in BUILTIN]
    root = models_dir() / "manifests"
    for path in sorted(root.glob("*/*.json")) if root.is_dir() else []:
        try:
            manifest = _read(path)
            if not manifest.folder.is_dir():
                raise StoreError(f"{path}: its model folder {manifest.path} is gone")
        except StoreError as exc:
            if skipped is not None:
                skipped(str(exc))
            continue
        found.append(manifest)
    return found


def save(manifest: Manifest) -> Path:
    name, tag = parse_name(f"{manifest.name}:{manifest.tag}")
    if name in BUILTIN:
        raise StoreError(f"'{name}' is a built-in model name")
    path = _manifest_path(name, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.modified = manifest.modified or datetime.now(timezone.utc).isoformat()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(manifest), indent=2))
    tmp.replace(path)
    return path


def remove(ref: str) -> Manifest:
    """Delete a manifest, and its folder when the store owns it and no other manifest points at it.

    A model pulled from the hub owns its snapshot in the Hugging Face cache: the snapshot goes, with the refs
    that name it and the blobs no other snapshot links to.
    """
    name, tag = _key(ref)
    if name in BUILTIN and tag == "latest":
        raise StoreError(f"'{name}' is built into dgemma and cannot be removed")
    path = _manifest_path(name, tag)
    if not path.exists():
        raise ModelNotFound(ref, "see 'dgemma list'")  # pulling it would not help to delete it
    manifest = _read(path)  # read, not looked up: a model whose folder is gone can still be removed
    path.unlink()
    still_used = any(m.path == manifest.path for m in list_models())
    if not still_used and manifest.folder.exists():
        if manifest.source.startswith("hf:"):
            from .cache import delete_snapshot  # huggingface_hub loads only when a pulled model goes

            delete_snapshot(manifest.folder)
        elif manifest.source != "local":
            shutil.rmtree(manifest.folder)
    parent = _manifest_path(name, tag).parent
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
    return manifest


def _load_record(manifest: Manifest) -> Path:
    key = hashlib.sha256(str(manifest.folder.resolve()).encode()).hexdigest()[:16]
    return models_dir() / "loads" / f"{key}.json"


def record_load(manifest: Manifest, loaded: LoadFinished) -> None:
    """Keep how long this load took. Best effort: a store that cannot be written must not fail the load."""
    path = _load_record(manifest)
    record = {"path": manifest.path, "seconds": loaded.seconds, "bytes": loaded.bytes}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # loads in two processes must not share a temporary file
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
    except OSError:
        pass


def last_load(manifest: Manifest) -> LoadFinished | None:
    """How long the folder's last load took, when one is on record."""
    try:
        record = json.loads(_load_record(manifest).read_text())
        return LoadFinished(float(record["seconds"]), int(record["bytes"]))
    except (OSError, ValueError, TypeError, KeyError):  # none yet, or unreadable: as good as none
        return None
