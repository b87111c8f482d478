"""The chat when a `dgemma serve` holds the model: the same REPL (chat.py), each turn sent to the server with the
conversation so far (/api/chat), so the model stays loaded between chats and commands."""

from __future__ import annotations

import sys
from pathlib import Path

from dgemma_runtime import DgemmaError, GenerationDefaults, GenerationOptions, Message

from .chat import Chat
from .client import Remote
from .errors import UsageProblem
from .views import LiveView, PlainView, consume, print_stats


class RemoteChat(Chat):
    def __init__(
        self,
        remote: Remote,
        options: GenerationOptions,
        think: bool = False,
        system: str | None = None,
        verbose: bool = False,
        where: str = "",
    ) -> None:
        # No engine and no loader in this process: every method that would use them is overridden here.
        super().__init__(None, remote.manifest, options, None, think, system, verbose)  # type: ignore[arg-type]
        self.remote, self.where = remote, where

    @property
    def defaults(self) -> GenerationDefaults:
        return self.remote.defaults

    def ask(self, text: str) -> None:
        system = [Message("system", self.system)] if self.system else []
        turns = [*system, *self.history, Message("user", text)]
        view = LiveView(self.console, self.remote.tokenizer) if sys.stdout.isatty() else PlainView()
        try:
            consume(self.remote.chat(turns, self.think, self.options), view)
        except KeyboardInterrupt:  # the connection is closed: the server stops generating
            self.console.print("[dim](stopped)[/dim]")
        except DgemmaError as exc:  # the server refused or went away: the chat goes on
            view.close()
            self.console.print(f"[red]{exc}[/red]")
            return
        stats = view.finish()
        self.history += [Message("user", text), Message("model", view.answer)]
        if self.verbose and stats is not None:
            print_stats(stats, self.remote.load_seconds, [("runs in", self.where)])

    def attach(self, path: Path) -> None:
        raise UsageProblem("images are not sent to the server yet: 'dgemma run MODEL --image FILE' runs the model here")

    def load(self, ref: str) -> None:
        """The server loads the next model (letting the current one go first, as it does for any request)."""
        if ref.startswith((".", "/", "~")) or Path(ref).expanduser().is_dir():
            raise UsageProblem(f"the server loads stored models, not folders: 'dgemma run {ref}' runs it here")
        remote = Remote(self.remote.server, ref, self.remote.keep_alive)  # an unknown name fails here
        self.console.print(f"Loading model '{ref}'")
        remote.load()
        self.remote, self.manifest = remote, remote.manifest
        self.history.clear()
