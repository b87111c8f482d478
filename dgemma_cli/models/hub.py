"""What `dgemma pull NAME` asks the Hugging Face hub: which repo a name means, the repo's files at one commit,
and every hub failure turned into one line a user can act on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources

import httpx2
from dgemma_runtime import DgemmaError
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import UsageProblem
from . import store


class HubError(DgemmaError):
    pass


class HubUnreachable(HubError):
    pass


# What a failed pull was, for the server's status codes; each still says its own one line.
class NotOnHub(HubError):
    """No such repo, revision or model name."""


class AccessDenied(HubError):
    """Gated or private: `status` is the hub's 401 (no or a bad token) or 403 (a token without access)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class HubFailed(HubError):
    """The hub answered, with an error of its own."""


def _alias(name: str, tag: str, spec: str) -> tuple[str, str | None]:
    """The repo (and revision, if pinned) an alias in aliases.json stands for; `name` means `name:latest`."""
    if name in store.BUILTIN and tag == "latest":
        raise HubError(f"'{name}' is built into dgemma and cannot be pulled")
    raw: dict[str, str] = json.loads(resources.files("dgemma_cli").joinpath("aliases.json").read_text())
    aliases = {store.parse_name(alias): repo for alias, repo in raw.items()}
    hub = store.hub_ref(aliases.get((name, tag), ""))
    if hub is None:
        raise NotOnHub(f"unknown model '{spec}': pull one of {', '.join(raw)}, or a Hugging Face repo as org/repo")
    return hub


@dataclass(frozen=True)
class Target:
    repo_id: str
    revision: str | None  # None: the default branch
    name: str  # where the store keeps it
    tag: str
    again: str  # the command that pulls it again, for resume hints

    @property
    def ref(self) -> str:
        return self.name if self.tag == "latest" else f"{self.name}:{self.tag}"


def target(spec: str, revision: str | None = None) -> Target:
    """An alias (`diffusiongemma:26b`) or a repo (`[hf.co/]org/repo[:revision]`), with an optional --revision."""
    hub = store.hub_ref(spec)
    if hub is None:
        name, tag = store.parse_name(spec)
        repo_id, own_revision = _alias(name, tag, spec)
    else:
        repo_id, own_revision = hub
    if own_revision and revision and own_revision != revision:
        raise UsageProblem(f"'{spec}' names revision '{own_revision}' and --revision says '{revision}': pick one")
    revision = revision or own_revision
    if hub is not None:
        name, tag = store.hub_name(repo_id, revision)
    again = f"dgemma pull {spec}" + (f" --revision {revision}" if revision and not own_revision else "")
    return Target(repo_id=repo_id, revision=revision, name=name, tag=tag, again=again)


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # listed for files stored in LFS
    blob_id: str  # the git blob id

    @property
    def etag(self) -> str:
        """The name huggingface_hub gives the file's blob: the sha256 for LFS files, else the git blob id."""
        return self.sha256 or self.blob_id


@dataclass(frozen=True)
class RepoInfo:
    commit: str
    gated: bool
    files: dict[str, RemoteFile]


def repo_info(goal: Target, endpoint: str) -> RepoInfo:
    info = HfApi(endpoint=endpoint).model_info(
        goal.repo_id, revision=goal.revision, files_metadata=True, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
    )
    if not info.sha:
        raise HubFailed(f"the hub at {endpoint} did not say which commit '{goal.repo_id}' is at")
    files = {
        s.rfilename: RemoteFile(s.rfilename, int(s.size or 0), s.lfs.sha256 if s.lfs else None, s.blob_id or "")
        for s in info.siblings or []
    }
    return RepoInfo(commit=info.sha, gated=bool(info.gated), files=files)


@contextmanager
def hub_errors(goal: Target, endpoint: str, gated: bool = False) -> Iterator[None]:
    """Translate huggingface_hub's and the HTTP client's exceptions into one-line DgemmaErrors."""
    repo = goal.repo_id
    gated_line = (
        f"'{repo}' is gated: accept its licence at {endpoint}/{repo} and log in with 'hf auth login' or set HF_TOKEN"
    )
    try:
        yield
    except GatedRepoError as exc:
        raise AccessDenied(gated_line, 403 if exc.response is None else exc.response.status_code) from None
    except RepositoryNotFoundError:
        raise NotOnHub(
            f"model '{repo}' not found on the Hugging Face hub (a private repo needs 'hf auth login' or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise NotOnHub(f"revision '{goal.revision}' not found in '{repo}' on the Hugging Face hub") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise AccessDenied(
                gated_line if gated else f"the hub refused access to '{repo}' ({status}): check HF_TOKEN", status
            ) from None
        said = (exc.server_message or str(exc)).strip().splitlines()[0]
        raise HubFailed(f"the Hugging Face hub answered {status} for '{repo}': {said}") from None
    except HFValidationError:
        raise UsageProblem(f"'{repo}' is not a valid Hugging Face repo id") from None
    except httpx2.TransportError as exc:
        raise HubUnreachable(f"cannot reach the Hugging Face hub at {endpoint} ({exc or type(exc).__name__})") from None
