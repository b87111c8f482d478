"""scripts/client_example.py, the README's client for any OpenAI-compatible server, against a real `dgemma serve`
(vLLM, the other server it names, needs GPUs these tests do not have)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.cli import TIMEOUT

EXAMPLE = Path(__file__).parents[2] / "scripts" / "client_example.py"


def test_the_client_example_streams_an_answer_from_dgemma_serve(server, serve_env):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--base-url", f"{server.url}/v1", "--model", "tiny", "--max-tokens", "16"],
        env=serve_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr + server.log.read_text()
    assert result.stdout.strip(), "no answer was printed"
    assert result.stderr == ""
