"""Which heavy packages a `dgemma` command imports: the command line must start at once when it needs no model."""

from __future__ import annotations

import subprocess
import sys

from tests.support.cli import TIMEOUT

HEAVY = ("torch", "fastapi", "uvicorn", "huggingface_hub", "dgemma_kernels")
# `dgemma ARGS` in-process, saying at exit which heavy packages it imported (its last line on stderr).
PROBE = """
import atexit, sys
heavy = set(sys.argv[1].split(","))
atexit.register(lambda: print("imported:", *sorted(heavy & {m.split(".")[0] for m in sys.modules}), file=sys.stderr))
sys.argv = ["dgemma", *sys.argv[2:]]
from dgemma_cli.app import main
main()
"""


def heavy_imports(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(HEAVY), *args],
        env=env,
        input="",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    said = result.stderr.splitlines()[-1]
    assert said.startswith("imported:"), result.stderr
    return result, set(said.split()[1:])
