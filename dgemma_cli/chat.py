"""The interactive chat: a prompt_toolkit REPL over one runtime Session, so a follow-up turn encodes only
its own tokens. Settings that change the start of the prompt (system text, thinking, model) drop the cache;
the next turn then re-encodes the kept history."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import fields

import platformdirs
from dgemma_runtime import (
    DEFAULT_CONTEXT,
    ContextFullError,
    DgemmaError,
    Engine,
    GenerationOptions,
    Message,
    Session,
    reclaim,
    render_follow_up,
)
from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, InMemoryHistory
from rich.console import Console

from .facts import loaded_facts, model_facts
from .models import store
from .views import LiveView, PlainView, consume, print_stats


class NoModelLoaded(DgemmaError):
    """/load failed and the previous model could not be loaded back either: the chat cannot go on."""


HELP = """Commands:
  /set parameter NAME VALUE   steps, t_min, t_max, entropy_bound, seed, max_new_tokens, ...
  /set system TEXT            system prompt (starts the conversation over)
  /set think | nothink        let the model reason first, or not
  /set verbose | quiet        statistics after each answer, or not
  /show info | parameters | system
  /clear                      forget the conversation
  /load MODEL                 switch models
  /bye                        exit (or Ctrl-D)
Ctrl-C stops an answer. Start and end a message with \"\"\" to write several lines."""


class Chat:
    def __init__(
        self,
        engine: Engine,
        manifest: store.Manifest,
        options: GenerationOptions,
        loader: Callable[[str], tuple[store.Manifest, Engine]],
        think: bool = False,
        system: str | None = None,
        verbose: bool = False,
        console: Console | None = None,
    ) -> None:
        self.engine, self.manifest, self.options = engine, manifest, options
        self.loader = loader  # /load loads as the command line did (device, dtype, --quant)
        self.think, self.system, self.verbose = think, system, verbose
        self.console = console or Console(highlight=False)
        self.history: list[Message] = []
        self.session: Session | None = None
        self.prompt = PromptSession(history=_history())

    # -- input

    def read(self) -> str:
        text = self.prompt.prompt(">>> ", placeholder="Send a message (/? for help)")
        if not text.lstrip().startswith('"""'):
            return text
        lines = [text.lstrip()[3:]]
        while not lines[-1].rstrip().endswith('"""'):
            lines.append(self.prompt.prompt("... "))
        lines[-1] = lines[-1].rstrip()[:-3]
        return "\n".join(lines).strip()

    def loop(self) -> None:
        while True:
            try:
                text = self.read().strip()
            except KeyboardInterrupt:
                continue
            except EOFError:
                return
            if not text:
                continue
            if text.startswith("/"):
                if not self.command(text):
                    return
                continue
            self.ask(text)

    # -- answers

    def ask(self, text: str) -> None:
        tokenizer = self.engine.tokenizer
        assert tokenizer is not None
        if self.session is None:
            context = min(DEFAULT_CONTEXT, self.engine.config.max_position_embeddings)
            self.session = self.engine.new_session(context)
            system = [Message("system", self.system)] if self.system else []
            ids = tokenizer.chat([*system, *self.history, Message("user", text)], think=self.think)
        else:
            ids = tokenizer.encode(render_follow_up(text, think=self.think, closed=self.session.closed))
        view = LiveView(self.console, tokenizer) if sys.stdout.isatty() else PlainView()
        try:
            consume(self.engine.stream(ids, session=self.session, options=self.options), view)
        except KeyboardInterrupt:
            self.console.print("[dim](stopped)[/dim]")
        except ContextFullError as exc:
            self.console.print(f"[red]{exc}[/red] — /clear starts a new conversation")
            return
        stats = view.finish()
        self.history += [Message("user", text), Message("model", view.answer)]
        if self.verbose and stats is not None:
            print_stats(stats, 0.0, loaded_facts(self.engine))

    def restart(self) -> None:
        """Drop the cache; the history is re-encoded, under the new settings, on the next turn."""
        self.session = None

    # -- slash commands

    def command(self, line: str) -> bool:
        """Run a slash command; False means leave the chat."""
        words = line.split(maxsplit=3)
        head = words[0]
        try:
            if head in ("/bye", "/exit"):
                return False
            if head in ("/?", "/help"):
                self.console.print(HELP)
            elif head == "/clear":
                self.history.clear()
                self.restart()
                self.console.print("Cleared session context.")
            elif head == "/set" and len(words) >= 2:
                self.set(words[1:], line)
            elif head == "/show" and len(words) == 2:
                self.show(words[1])
            elif head == "/load" and len(words) == 2:
                self.load(words[1])
            else:
                self.console.print(f"Unknown command '{line}'. Type /? for help.")
        except NoModelLoaded:
            raise
        except DgemmaError as exc:
            self.console.print(f"[red]{exc}[/red]")
        return True

    def set(self, words: list[str], line: str) -> None:
        what = words[0]
        if what == "parameter" and len(words) == 3:
            self.set_parameter(words[1], words[2])
        elif what == "system":
            self.system = line.split(maxsplit=2)[2] if len(line.split(maxsplit=2)) == 3 else None
            self.restart()
            self.console.print("Set system message.")
        elif what in ("think", "nothink"):
            self.think = what == "think"
            self.restart()
            self.console.print(f"Set '{what}' mode.")
        elif what in ("verbose", "quiet"):
            self.verbose = what == "verbose"
            self.console.print(f"Set '{what}' mode.")
        else:
            self.console.print(f"Unknown command '{line}'. Type /? for help.")

    def set_parameter(self, name: str, raw: str) -> None:
        candidate = self.options.updated({name: raw})
        candidate.resolve(self.engine.defaults)  # against the model's defaults too (t_min <= t_max), before keeping it
        self.options = candidate
        self.console.print(f"Set parameter '{name}' to '{raw}'.")

    def show(self, what: str) -> None:
        if what == "info":
            for label, value in model_facts(self.manifest):
                self.console.print(f"[bold]{label:16s}[/bold]{value}")
        elif what == "parameters":
            resolved = self.options.resolve(self.engine.defaults)
            for f in fields(resolved):
                self.console.print(f"{f.name:22s}{getattr(resolved, f.name)}")
        elif what == "system":
            self.console.print(self.system or "No system message was specified for this model.")
        else:
            self.console.print(f"Unknown command '/show {what}'. Type /? for help.")

    def load(self, ref: str) -> None:
        """Switch models as Ollama does: the current one leaves memory before the next one loads (two 26B models
        rarely fit together); if the next one fails to load, the current one is loaded back."""
        store.resolve(ref)  # an unknown name fails here, before the current model is let go
        self.console.print(f"Loading model '{ref}'")
        current = self.manifest.path if self.manifest.source == "local" else self.manifest.ref
        self.release()
        try:
            self.manifest, self.engine = self.loader(ref)
        except DgemmaError:
            try:
                self.manifest, self.engine = self.loader(current)
            except DgemmaError as exc:
                raise NoModelLoaded(f"could not load '{current}' back either: {exc}") from None
            raise  # the conversation goes on with the model it had, its history re-encoded on the next turn
        self.history.clear()

    def release(self) -> None:
        """Drop the chat's references to the model (the engine, the session's cache) and return its memory."""
        del self.engine
        self.session = None
        reclaim()


def _history() -> FileHistory | InMemoryHistory:
    if os.environ.get("DGEMMA_NOHISTORY"):
        return InMemoryHistory()
    path = platformdirs.user_state_path("dgemma") / "history"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileHistory(str(path))
