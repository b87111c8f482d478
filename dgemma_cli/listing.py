"""`list` and `ps` as Ollama prints them: NAME, ID (a digest's first 12 characters), SIZE, and times as people say
them ("2 weeks ago", "4 minutes from now")."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import datetime, timezone

from rich.console import Console
from rich.table import Table

from .models.store import Manifest
from .units import human

FOREVER_DAYS = 20 * 365  # an expiry this far ahead is a model kept for good (keep-alive -1): Ollama says "Forever"


def duration(seconds: float) -> str:
    """Ollama's wording of a duration (its format.HumanDuration)."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 60:
        return "1 second" if int(seconds) == 1 else f"{int(seconds)} seconds"
    minutes = int(seconds // 60)
    if minutes < 60:
        return "About a minute" if minutes == 1 else f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    for below, unit, size in (
        (48, "hours", 1),
        (24 * 14, "days", 24),
        (24 * 60, "weeks", 24 * 7),
        (24 * 365 * 2, "months", 24 * 30),
    ):
        if hours < below:
            return f"{hours // size} {unit}"
    return f"{hours // (24 * 365)} years"


def relative(when: datetime, now: datetime | None = None) -> str:
    """'2 weeks ago', '4 minutes from now', or 'Forever'."""
    ago = ((now or datetime.now(timezone.utc)) - when).total_seconds()
    if ago < -FOREVER_DAYS * 86400:
        return "Forever"
    return f"{duration(-ago)} from now" if ago < 0 else f"{duration(ago)} ago"


def timestamp(text: str) -> datetime:
    """An ISO time as the store and the server write it ('Z' included, which Python 3.10 does not read)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def processor(size: int, on_gpu: int) -> str:
    """Where the model's weights are, as `ollama ps` says it."""
    if on_gpu <= 0:
        return "100% CPU"
    if on_gpu >= size:
        return "100% GPU"
    cpu = round(100 * (size - on_gpu) / size)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def table(*columns: str) -> Table:
    listing = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        listing.add_column(column)
    return listing


def print_table(listing: Table) -> None:
    """On a terminal, as wide as it is; piped, never wrapped (a script reads one row per line)."""
    Console(width=None if sys.stdout.isatty() else 1000).print(listing)


def models_table(manifests: Iterable[Manifest]) -> Table:
    """`dgemma list`."""
    listing = table("NAME", "ID", "SIZE", "MODIFIED")
    for m in manifests:
        modified = relative(timestamp(m.modified)) if m.modified else ""
        listing.add_row(f"{m.name}:{m.tag}", m.digest[:12], human(m.size_bytes()), modified)
    return listing


def running_table(models: Iterable[dict]) -> Table:
    """`dgemma ps`, from the server's /api/ps: the resident model (and one still loading)."""
    listing = table("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL")
    for m in models:
        if "expires_at" not in m:
            until = "Loading..."
        elif (expires := timestamp(m["expires_at"])) <= datetime.now(timezone.utc):
            until = "Stopping..."
        else:
            until = relative(expires)
        where = processor(m["size"], m.get("size_vram", 0))
        listing.add_row(m["name"], m["digest"][:12], human(m["size"]), where, str(m.get("context_length", "")), until)
    return listing
