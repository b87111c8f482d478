"""One repo in the Hugging Face cache, laid out exactly as huggingface_hub writes and reads it:
`models--org--repo/{blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>, refs/<revision>}`,
with its locks in `.locks/models--org--repo/<etag>.lock`. Our resumable partial downloads live beside them in
`models--org--repo/.dgemma-partial/`, because huggingface_hub deletes its own partial files.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import AbstractContextManager
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.utils import WeakFileLock

PARTIAL_DIR = ".dgemma-partial"


class RepoCache:
    def __init__(self, cache_dir: Path, repo_id: str) -> None:
        self.cache_dir = Path(cache_dir)
        # huggingface_hub's repo_folder_name, without importing file_download (slow) for one line
        self.root = self.cache_dir / constants.REPO_ID_SEPARATOR.join(["models", *repo_id.split("/")])

    def blob(self, etag: str) -> Path:
        return self.root / "blobs" / etag

    def snapshot(self, commit: str) -> Path:
        return self.root / "snapshots" / commit

    def partial(self, etag: str) -> Path:
        return self.root / PARTIAL_DIR / f"{etag}.part"

    def lock(self, etag: str) -> AbstractContextManager:
        """The lock huggingface_hub takes around the same blob, so a concurrent `hf download` waits for us."""
        path = self.cache_dir / ".locks" / self.root.name / f"{etag}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return WeakFileLock(path)

    def has(self, commit: str, path: str, etag: str, size: int) -> bool:
        """Whether the file is in the snapshot, or its blob is (a file shared with another revision)."""
        return _has_size(self.snapshot(commit) / path, size) or _has_size(self.blob(etag), size)

    def adopt(self, commit: str, path: str, etag: str, size: int) -> bool:
        """Whether the snapshot holds the file, once a blob already cached for it has been linked in."""
        if _has_size(self.snapshot(commit) / path, size):
            return True
        if _has_size(self.blob(etag), size):
            self.link(commit, path, etag)
            return True
        return False

    def add_blob(self, verified: Path, etag: str) -> None:
        """Move a complete, verified download into `blobs/` (same filesystem: one atomic rename)."""
        self.blob(etag).parent.mkdir(parents=True, exist_ok=True)
        os.replace(verified, self.blob(etag))

    def link(self, commit: str, path: str, etag: str) -> None:
        """Point `snapshots/<commit>/<path>` at the blob with a relative symlink, as huggingface_hub does."""
        pointer = self.snapshot(commit) / path
        blob = self.blob(etag)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        tmp = pointer.with_name(f".{pointer.name}.{uuid.uuid4().hex[:8]}.tmp")
        os.symlink(os.path.relpath(blob, pointer.parent), tmp)
        os.replace(tmp, pointer)

    def write_ref(self, revision: str, commit: str) -> None:
        """`refs/<branch or tag>` holds the commit it resolved to; a commit needs no ref."""
        if revision == commit:
            return
        ref = self.root / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f"{ref.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref)


def _has_size(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size


def _linked_blobs(snapshot: Path) -> set[Path]:
    return {p.resolve() for p in snapshot.rglob("*") if p.is_symlink()}


def delete_snapshot(snapshot: Path) -> None:
    """Delete one cached revision as `hf cache rm` does: the snapshot, the refs naming its commit, and the blobs
    no other snapshot links to; the whole repo folder when no snapshot is left."""
    root, commit = snapshot.parent.parent, snapshot.name
    if snapshot.parent.name != "snapshots" or not root.name.startswith("models--"):
        shutil.rmtree(snapshot)  # not in a cache layout: never climb above the folder itself
        return
    blobs = (root / "blobs").resolve()
    others = [s for s in snapshot.parent.iterdir() if s.is_dir() and s.name != commit]
    still_linked = set().union(*(_linked_blobs(s) for s in others))
    orphans = {b for b in _linked_blobs(snapshot) - still_linked if b.parent == blobs}
    shutil.rmtree(snapshot)
    if not others:
        shutil.rmtree(root)
        return
    for blob in orphans:
        blob.unlink(missing_ok=True)
    refs = root / "refs"
    for ref in refs.rglob("*") if refs.is_dir() else ():
        if ref.is_file() and ref.read_text().strip() == commit:
            ref.unlink()
