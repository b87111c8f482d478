"""The interactive chat: a prompt_toolkit REPL over one runtime Session, so a follow-up turn encodes only
its own tokens. Settings that change the start of the prompt (system text, thinking, model) drop the cache;
the next turn then re-encodes the kept history."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import platformdirs
from dgemma_runtime import (
    DEFAULT_CONTEXT,
    OPTION_NAMES,
    ContextFullError,
    DgemmaError,
    Engine,
    GenerationDefaults,
    GenerationOptions,
    ImageError,
    Message,
    Session,
    open_image,
    reclaim,
)
from prompt_toolkit import PromptSession
from prompt_toolkit.application import get_app
from prompt_toolkit.filters import Condition
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from rich.console import Console

from .facts import loaded_facts, model_facts
from .images import image_tokens, take_images
from .models import store
from .views import LiveView, PlainView, consume, image_header, print_stats


class NoModelLoaded(DgemmaError):
    """/load failed and the previous model could not be loaded back either: the chat cannot go on."""


HELP = """Commands:
  /set parameter NAME VALUE   steps, t_min, t_max, entropy_bound, seed, max_new_tokens, ...
  /set system TEXT            system prompt (starts the conversation over)
  /set think | nothink        let the model reason first, or not
  /set verbose | quiet        statistics after each answer, or not
  /show info | parameters | system
  /image FILE                 show the model an image with the next message (so does typing its path)
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
        self.images: list[Path] = []  # held for the next message
        self.prompt = PromptSession(history=_history(), key_bindings=_multiline(), prompt_continuation="... ")

    # -- input

    def read(self) -> str:
        """One message. Between \"\"\"s it spans lines, written in one prompt (Enter adds a line until the closing
        quotes), so the history keeps it whole and Up brings it back as it was sent."""
        text = self.prompt.prompt(">>> ", placeholder="Send a message (/? for help)")
        if not text.strip().startswith('"""'):
            return text
        return text.strip()[3:].removesuffix('"""').strip()

    def loop(self) -> None:
        while True:
            try:
                text = self.read().strip()
            except KeyboardInterrupt:
                if not self.prompt.default_buffer.text:  # as Ollama: Ctrl-C on a line being written only clears it
                    self.console.print("Use Ctrl + d or /bye to exit.")
                continue
            except EOFError:
                return
            if not text:
                continue
            if text.startswith("/") and not take_images(text.split()[0])[1]:  # an image's path starts a message
                if not self.command(text):
                    return
                continue
            self.ask(text)

    # -- answers

    def ask(self, text: str) -> None:
        tokenizer = self.engine.tokenizer
        assert tokenizer is not None
        text, typed = take_images(text)
        images, self.images = (*self.images, *typed), []  # held for this message only, even one that fails
        try:
            if self.session is None:
                system = [Message("system", self.system)] if self.system else []
                turns = [*system, *self.history, Message("user", text, images)]
                prompt = self.engine.prepare(turns, think=self.think)
                context = min(DEFAULT_CONTEXT, self.engine.config.max_position_embeddings)
                self.session = self.engine.new_session(context)  # after a prompt that could be prepared
            else:
                prompt = self.engine.prepare_follow_up(text, images, self.think, self.session.closed)
        except ImageError as exc:
            self.console.print(f"[red]{exc}[/red]")
            return
        view = LiveView(self.console, tokenizer) if sys.stdout.isatty() else PlainView()
        if images and isinstance(view, LiveView):  # this message's images come last in the prompt
            tokens = image_tokens(prompt, self.engine.vision)[-len(images) :]
            self.console.print(image_header([(path.name, n) for path, n in zip(images, tokens, strict=True)]))
        try:
            consume(self.engine.stream(prompt, session=self.session, options=self.options), view)
        except KeyboardInterrupt:
            self.console.print("[dim](stopped)[/dim]")
        except ContextFullError as exc:
            self.console.print(f"[red]{exc}[/red] — /clear starts a new conversation")
            return
        stats = view.finish()
        self.history += [Message("user", text, images), Message("model", view.answer)]
        if self.verbose and stats is not None:
            print_stats(stats, 0.0, loaded_facts(self.engine))

    @property
    def defaults(self) -> GenerationDefaults:
        """The model's sampler defaults, which /set and /show resolve the options against."""
        return self.engine.defaults

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
                self.images.clear()
                self.restart()
                self.console.print("Cleared session context.")
            elif head == "/set" and len(words) >= 2:
                self.set(words[1:], line)
            elif head == "/show" and len(words) == 2:
                self.show(words[1])
            elif head == "/load" and len(words) == 2:
                self.load(words[1])
            elif head == "/image" and len(words) >= 2:
                self.attach(Path(line.split(maxsplit=1)[1].strip("'\"")).expanduser())
            elif usage := usage_of(head):  # a known command without the words it takes
                self.console.print(usage)
            else:
                self.console.print(f"Unknown command '{line}'. Type /? for help.")
        except NoModelLoaded:
            raise
        except DgemmaError as exc:
            self.console.print(f"[red]{exc}[/red]")
        return True

    def attach(self, path: Path) -> None:
        """/image: checked now, so a bad file or a text-only model is said before the message is written."""
        if self.engine.vision is None:
            raise ImageError(f"'{self.manifest.ref}' reads text only: it cannot take images")
        open_image(path)
        self.images.append(path)
        self.console.print(f"Added image '{path.name}'.", markup=False)

    def set(self, words: list[str], line: str) -> None:
        what = words[0]
        if what == "parameter" and len(words) == 3:
            self.set_parameter(words[1], words[2])
        elif what == "parameter":
            self.console.print(f"Usage: /set parameter NAME VALUE, where NAME is one of: {', '.join(OPTION_NAMES)}")
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
            self.console.print(usage_of("/set"))

    def set_parameter(self, name: str, raw: str) -> None:
        candidate = self.options.updated({name: raw})
        candidate.resolve(self.defaults)  # against the model's defaults too (t_min <= t_max), before keeping it
        self.options = candidate
        self.console.print(f"Set parameter '{name}' to '{raw}'.")

    def show(self, what: str) -> None:
        if what == "info":
            for label, value in model_facts(self.manifest):
                self.console.print(f"[bold]{label:16s}[/bold]{value}")
        elif what == "parameters":
            resolved = self.options.resolve(self.defaults)
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


def usage_of(head: str) -> str:
    """The help's lines for one command, or '' for a command the chat does not know."""
    lines = [line for line in HELP.splitlines() if line.lstrip().startswith(f"{head} ")]
    return "\n".join(["Usage:", *lines]) if lines else ""


def _open_quote(text: str) -> bool:
    """A message begun with \"\"\" and not yet ended with another."""
    text = text.strip()
    return text.startswith('"""') and (len(text) < 6 or not text.endswith('"""'))


def _multiline() -> KeyBindings:
    """Enter inside an open \"\"\" message starts a new line of it instead of sending it."""
    bindings = KeyBindings()

    @bindings.add("enter", filter=Condition(lambda: _open_quote(get_app().current_buffer.text)))
    def _(event: KeyPressEvent) -> None:
        event.current_buffer.newline(copy_margin=False)

    return bindings


def _history() -> FileHistory | InMemoryHistory:
    if os.environ.get("DGEMMA_NOHISTORY"):
        return InMemoryHistory()
    path = platformdirs.user_state_path("dgemma") / "history"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileHistory(str(path))
