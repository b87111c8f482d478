"""Images on the command line and in the chat: prompt words that name image files and --image give the ids the
runtime gives in process, a bad image or a text-only model is one error line, the live view names each image
with its tokens, `show` says whether a model sees, and the chat holds /image and typed paths for the next turn."""

from __future__ import annotations

import io
import json
from pathlib import Path

import dgemma_runtime
import pytest
import torch
from dgemma_runtime import FinalEvent, GenerationOptions, Message
from rich.console import Console

from dgemma_cli.chat import Chat
from dgemma_cli.images import image_tokens, take_images
from dgemma_cli.models import store
from tests.support.checkpoints import write_vision_checkpoint
from tests.support.cli import Screen, assert_one_line_error, dgemma, facts, needs_builtin, ok
from tests.test_images import BAD, noise

SEED, LENGTH = 3, 32


@pytest.fixture(scope="module")
def eyes(tmp_path_factory) -> Path:
    """A random chat model with a vision tower (images become at most 70 soft tokens)."""
    return write_vision_checkpoint(tmp_path_factory.mktemp("eyes"))


@pytest.fixture(scope="module")
def engine(eyes):
    return dgemma_runtime.load(eyes, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("pictures")
    noise("RGB", (37, 23), 1).save(where / "pic.png")
    noise("RGB", (64, 40), 2).save(where / "other.jpg")
    return where


def frames(stdout: str) -> tuple[list[int], int]:
    """`--frames` output: the ids of every canvas, in order, and the prompt's token count."""
    records = [json.loads(line) for line in stdout.splitlines()]
    ids = [token for r in records if r["type"] == "canvas" for token in r["ids"]]
    return ids, next(r["stats"]["prompt_tokens"] for r in records if r["type"] == "final")


# -- one answer ----------------------------------------------------------------------------------------------


def test_image_words_and_image_flags_give_the_in_process_answer(eyes, engine, pictures, shared_env):
    pic, other = pictures / "pic.png", pictures / "other.jpg"
    flags = ("--image", str(other), "--seed", str(SEED), "--max-new-tokens", str(LENGTH), "--frames")
    # A word naming an image file is taken out of the text; one naming no file stays text.
    said = ok(dgemma(shared_env, "run", str(eyes), "Compare", str(pic), "with", "missing.png", *flags))
    prompt = engine.prepare([Message("user", "Compare with missing.png", (other, pic))])  # --image first
    expected = engine.generate(prompt, seed=SEED, max_new_tokens=LENGTH)
    assert frames(said.stdout) == (expected.token_ids, len(prompt.ids))
    assert len(image_tokens(prompt, engine.vision)) == 2


@pytest.mark.parametrize("name", BAD)
def test_a_bad_image_is_one_error_line(tmp_path, eyes, shared_env, name):
    write, message = BAD[name]
    write(tmp_path / name)
    result = dgemma(shared_env, "run", str(eyes), "Describe it.", "--image", str(tmp_path / name))
    said = assert_one_line_error(result)
    assert message in said and name in said


@needs_builtin
def test_a_text_only_model_refuses_an_image_in_one_line(pictures, shared_env):
    said = assert_one_line_error(dgemma(shared_env, "run", "dgemma-tiny", "Describe", str(pictures / "pic.png")))
    assert "reads text only" in said


@needs_builtin
def test_show_says_whether_a_model_takes_images(eyes, shared_env):
    assert facts(ok(dgemma(shared_env, "show", str(eyes))).stdout)["vision"] == "yes: images of up to 70 tokens"
    assert facts(ok(dgemma(shared_env, "show", "dgemma-tiny")).stdout)["vision"] == "no"


def test_taking_image_paths_from_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a.png", "My Photo.JPEG", "notes.txt"):
        (tmp_path / name).write_bytes(b"")  # whether they are images is checked later, when they are opened
    assert take_images("Describe ./a.png please") == ("Describe please", [Path("a.png")])
    assert take_images("Look at 'My Photo.JPEG'\nand a.png.") == ("Look at\nand a.png.", [Path("My Photo.JPEG")])
    assert take_images("notes.txt b.png") == ("notes.txt b.png", [])  # not an image's name; no such file


# -- the live view -------------------------------------------------------------------------------------------


def test_the_live_view_names_each_image_and_its_tokens_at_the_top(eyes, engine, pictures, shared_env):
    pytest.importorskip("pexpect")
    from tests.support.terminal import Terminal

    pic = pictures / "pic.png"
    tokens = image_tokens(engine.prepare([Message("user", "Describe it.", (pic,))]), engine.vision)
    terminal = Terminal(shared_env, "run", str(eyes), "Describe it.", "--image", str(pic), "--max-new-tokens", "16")
    try:
        assert terminal.wait() == 0
    finally:
        terminal.kill()
    assert Screen().feed(terminal.transcript).text.splitlines()[0] == f"image pic.png · {tokens[0]} tokens"


# -- the chat ------------------------------------------------------------------------------------------------


class Recorder:
    """The engine's `stream`, recording each prompt it is given and the ids it answers."""

    def __init__(self, engine) -> None:
        self.stream = engine.stream
        self.prompts: list[dgemma_runtime.PreparedPrompt] = []
        self.answers: list[list[int]] = []

    def __call__(self, prompt, **kwargs):
        self.prompts.append(prompt)
        for event in self.stream(prompt, **kwargs):
            if isinstance(event, FinalEvent):
                self.answers.append(list(event.token_ids[0]))
            yield event


def chat_over(engine, folder: Path, monkeypatch) -> tuple[Chat, io.StringIO, Recorder]:
    monkeypatch.setenv("DGEMMA_NOHISTORY", "1")
    recorder = Recorder(engine)
    monkeypatch.setattr(engine, "stream", recorder)
    output = io.StringIO()
    options = GenerationOptions(seed=SEED, max_new_tokens=16)
    chat = Chat(engine, store.resolve(str(folder)), options, loader=None, console=Console(file=output, width=200))
    return chat, output, recorder


def answer(stream, prompt: dgemma_runtime.PreparedPrompt, session: dgemma_runtime.Session) -> list[int]:
    final = [
        event
        for event in stream(prompt, session=session, seed=SEED, max_new_tokens=16)
        if isinstance(event, FinalEvent)
    ]
    return list(final[0].token_ids[0])


def same(prompt: dgemma_runtime.PreparedPrompt, expected: dgemma_runtime.PreparedPrompt) -> bool:
    return prompt.ids == expected.ids and torch.equal(prompt.pixel_values, expected.pixel_values)


def test_the_chat_holds_images_for_the_next_turn_and_keeps_them_in_its_history(eyes, engine, pictures, monkeypatch):
    pic, other = pictures / "pic.png", pictures / "other.jpg"
    chat, output, recorder = chat_over(engine, eyes, monkeypatch)
    assert chat.command(f"/image {pic}") and chat.images == [pic]
    assert "Added image 'pic.png'." in output.getvalue()
    chat.ask("What is this?")
    first = Message("user", "What is this?", (pic,))
    assert same(recorder.prompts[0], engine.prepare([first])) and chat.images == []
    closed = chat.session.closed
    chat.ask(f"And this one: {other}")  # a typed path: the session encodes only the new turn
    follow = engine.prepare_follow_up("And this one:", [other], closed=closed)
    assert same(recorder.prompts[1], follow)
    # The answers are the runtime's, turn for turn, in one session.
    session = engine.new_session(chat.session.cache.capacity)
    expected = [answer(recorder.stream, prompt, session) for prompt in (engine.prepare([first]), follow)]
    assert recorder.answers == expected
    # A new session (thinking switched) re-encodes the history, both images included.
    assert chat.history[::2] == [first, Message("user", "And this one:", (other,))]
    chat.command("/set nothink")
    chat.ask("Once more.")
    assert same(recorder.prompts[2], engine.prepare([*chat.history[:4], Message("user", "Once more.")]))
    assert recorder.prompts[2].pixel_values.shape[0] == 2


def test_the_chat_says_what_is_wrong_with_an_image_in_one_line(eyes, engine, pictures, tmp_path, monkeypatch):
    chat, output, recorder = chat_over(engine, eyes, monkeypatch)
    (tmp_path / "notes.png").write_text("not a picture")
    assert chat.command(f"/image {tmp_path / 'notes.png'}")
    assert chat.images == [] and output.getvalue().strip().endswith("notes.png: not an image Pillow can read")
    chat.ask(f"Describe {tmp_path / 'notes.png'}")  # typed: refused at the turn, nothing generated
    assert recorder.prompts == [] and chat.history == [] and chat.session is None
    assert output.getvalue().count("not an image") == 2


@needs_builtin
def test_a_text_only_model_refuses_an_image_in_the_chat(pictures, monkeypatch):
    tiny = store.resolve("dgemma-tiny").folder
    chat, output, recorder = chat_over(dgemma_runtime.load(tiny, device="cpu", dtype="float32"), tiny, monkeypatch)
    assert chat.command(f"/image {pictures / 'pic.png'}")
    assert chat.images == [] and "reads text only" in output.getvalue()
    chat.ask(f"Describe {pictures / 'pic.png'}")
    assert recorder.prompts == [] and output.getvalue().count("reads text only") == 2


def test_image_in_the_terminal_chat(eyes, engine, pictures, shared_env):
    pytest.importorskip("pexpect")
    from tests.support.terminal import PROMPT_MARK, Terminal

    pic = pictures / "pic.png"
    tokens = image_tokens(engine.prepare([Message("user", "What is it?", (pic,))]), engine.vision)
    terminal = Terminal(shared_env, "run", str(eyes), "--max-new-tokens", "16")
    try:
        terminal.expect(PROMPT_MARK)
        assert "Added image 'pic.png'." in terminal.say(f"/image {pic}", "Added image")
        terminal.expect(PROMPT_MARK)
        assert f"image pic.png · {tokens[0]} tokens" in Screen().feed(terminal.ask("What is it?")).text
        # A message that starts with an image's path is a message, not an unknown command.
        assert "image other.jpg · " in Screen().feed(terminal.ask(f"{pictures / 'other.jpg'} and this?")).text
        terminal.child.sendline("/bye")
        assert terminal.wait() == 0
    finally:
        terminal.kill()
