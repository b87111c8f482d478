"""`dgemma` on a pseudo-terminal (100x30, xterm-256color), as the terminal tests drive it."""

from __future__ import annotations

import io
import re

import pexpect

from tests.support.cli import DGEMMA, TIMEOUT

ROWS, COLUMNS = 30, 100
STATUS = re.compile(r"canvas (\d+) · step (\d+)/(\d+)")
PROMPT_MARK = ">>> "
CURSOR_QUERY = re.escape("\x1b[6n")  # prompt_toolkit asks where the cursor is, and waits a second for the answer


class Terminal:
    """`dgemma ARGS` on a pseudo-terminal; every byte it writes is kept in `transcript`."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.log = io.StringIO()
        self.child = pexpect.spawn(
            DGEMMA,
            list(args),
            env=env | {"TERM": "xterm-256color"},
            dimensions=(ROWS, COLUMNS),
            encoding="utf-8",
            codec_errors="replace",
            timeout=TIMEOUT,
        )
        self.child.logfile_read = self.log

    @property
    def transcript(self) -> str:
        return self.log.getvalue()

    def mark(self) -> int:
        return len(self.transcript)

    def since(self, mark: int) -> str:
        return self.transcript[mark:]

    def expect(self, *patterns) -> int:
        """Wait for the first of `patterns` (regular expressions, or pexpect.EOF); its index. Answers cursor
        position queries on the way, as a real terminal does."""
        while True:
            index = self.child.expect([CURSOR_QUERY, *patterns])
            if index > 0:
                return index - 1
            self.child.send("\x1b[1;1R")

    def say(self, line: str, then: str) -> str:
        """Type `line` and Enter, wait for `then` after it; what the program wrote meanwhile."""
        start = self.mark()
        self.child.sendline(line)
        self.expect(then)
        return self.since(start)

    def ask(self, question: str) -> str:
        """Send a question and wait for the answer to finish: the view draws, then the prompt comes back."""
        start = self.mark()
        self.child.sendline(question)
        self.expect(STATUS.pattern)  # generating: a '>>> ' from here on is the next prompt, not the echo
        self.expect(PROMPT_MARK)
        return self.since(start)

    def wait(self) -> int:
        """Wait for the program to end; its exit status."""
        self.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus

    def kill(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
