"""What `list`, `ps` and the live view's status line say, in process: Ollama's wording of times and processors, and
a tok/s that counts from the first step."""

from __future__ import annotations

import io
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

import pytest
from dgemma_runtime import StepEvent
from rich.console import Console

from dgemma_cli.listing import processor, relative
from dgemma_cli.views import LiveView

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("ago", "said"),
    [
        (timedelta(seconds=0.5), "Less than a second ago"),
        (timedelta(seconds=1), "1 second ago"),
        (timedelta(seconds=42), "42 seconds ago"),
        (timedelta(minutes=1, seconds=30), "About a minute ago"),
        (timedelta(minutes=5), "5 minutes ago"),
        (timedelta(hours=1), "About an hour ago"),
        (timedelta(hours=30), "30 hours ago"),
        (timedelta(days=3), "3 days ago"),
        (timedelta(weeks=2), "2 weeks ago"),
        (timedelta(days=70), "2 months ago"),
        (timedelta(days=800), "2 years ago"),
        (-timedelta(minutes=4, seconds=59), "4 minutes from now"),
        (NOW - datetime(9999, 12, 31, tzinfo=timezone.utc), "Forever"),  # keep-alive -1
    ],
)
def test_times_are_worded_as_ollama_words_them(ago, said):
    assert relative(NOW - ago, NOW) == said


@pytest.mark.parametrize(("on_gpu", "said"), [(0, "100% CPU"), (100, "100% GPU"), (25, "75%/25% CPU/GPU")])
def test_the_processor_is_where_the_weights_are(on_gpu, said):
    assert processor(100, on_gpu) == said


class Pieces:
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return "".join(f"t{token} " for token in ids)


def test_the_live_rate_counts_from_the_first_step():
    view = LiveView(Console(file=io.StringIO(), force_terminal=True), Pieces(), clock=lambda: 0.5, offscreen=True)
    step = StepEvent(0, 0, 1, 8, (1, 2, 3, 4), (True, True, False, False), (True,) * 4, 1.0, False)
    view.handle(step)  # nothing finished yet: two tokens accepted in half a second
    view.close()
    assert view.status.plain.endswith(" · 4 tok/s"), view.status.plain
