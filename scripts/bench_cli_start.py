"""How fast `dgemma` answers the commands that need no model: `--help`, `--version`, `list` and `ps`. Each runs as a
fresh process of the installed console script, `--runs` times; the median and best wall times are printed, beside
a bare `python -c pass` for scale. `ps` asks a real `dgemma serve` that this script starts on a free port holding
dgemma-tiny, and stops at the end.

    python scripts/bench_cli_start.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = (["--help"], ["--version"], ["list"], ["ps"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(argv: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each run (CPU time moves less than wall time on a busy machine)."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return walls, cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    dgemma = shutil.which("dgemma", path=str(Path(sys.executable).parent)) or shutil.which("dgemma")
    if dgemma is None:
        sys.exit("no 'dgemma' executable: run 'pip install -e .' first")
    home = Path(tempfile.mkdtemp(prefix="dgemma-start-"))
    env = os.environ | {"DGEMMA_HOST": f"127.0.0.1:{free_port()}", "XDG_STATE_HOME": str(home)}
    log = home / "serve.txt"
    with log.open("w") as err:
        server = subprocess.Popen([dgemma, "serve", "--model", "dgemma-tiny"], env=env, stderr=err)
    try:
        while not re.search(r"serving .* on http", log.read_text()):
            if server.poll() is not None:
                sys.exit(f"dgemma serve exited: {log.read_text()}")
            time.sleep(0.1)
        rows = [("python -c pass", timed([sys.executable, "-c", "pass"], env, args.runs))]
        rows += [(f"dgemma {' '.join(command)}", timed([dgemma, *command], env, args.runs)) for command in COMMANDS]
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(home, ignore_errors=True)
    print(f"{args.runs} runs each on {os.cpu_count()} cores; wall time (median, best) and CPU time (median)")
    print(f"{'command':18s}{'median':>10s}{'best':>10s}{'CPU':>10s}")
    for name, (walls, cpus) in rows:
        print(f"{name:18s}{statistics.median(walls):9.3f}s{min(walls):9.3f}s{statistics.median(cpus):9.3f}s")


if __name__ == "__main__":
    main()
