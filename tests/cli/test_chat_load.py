"""/load in the chat, in process: the current model leaves memory before the next one loads, an unknown name
touches nothing, and a failed load brings the current model back."""

from __future__ import annotations

import gc
import io
import weakref
from pathlib import Path

import pytest
from dgemma_runtime import GenerationOptions
from rich.console import Console

from dgemma_cli.app import LoadSettings, load_model
from dgemma_cli.chat import Chat, NoModelLoaded
from tests.support.checkpoints import write_chat_checkpoint

SETTINGS = LoadSettings(device="cpu", dtype="auto", quant=None, quant_dense=False)


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    first = write_chat_checkpoint(tmp_path / "first")
    second = write_chat_checkpoint(tmp_path / "second", seed=1)
    return first, second


class Loader:
    """`load_model` as the chat calls it, recording each ref and whether the chat's previous engine was gone."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.previous: weakref.ref | None = None
        self.broken: set[str] = set()

    def __call__(self, ref: str):
        gc.collect()
        self.calls.append((ref, self.previous is not None and self.previous() is None))
        if ref in self.broken:  # a weights file cut short, found only when loading
            for shard in Path(ref).glob("*.safetensors"):
                shard.write_bytes(shard.read_bytes()[:1000])
        manifest, engine, _ = load_model(ref, SETTINGS)
        self.previous = weakref.ref(engine)
        return manifest, engine


def start_chat(folder: Path, loader: Loader, monkeypatch) -> tuple[Chat, io.StringIO]:
    monkeypatch.setenv("DGEMMA_NOHISTORY", "1")
    output = io.StringIO()
    manifest, engine = loader(str(folder))
    chat = Chat(engine, manifest, GenerationOptions(), loader, console=Console(file=output, width=200))
    return chat, output


def test_load_frees_the_current_model_first(folders, monkeypatch):
    first, second = folders
    loader = Loader()
    chat, _ = start_chat(first, loader, monkeypatch)
    chat.history.append(object())  # type: ignore[arg-type]
    assert chat.command(f"/load {second}")
    assert loader.calls[-1] == (str(second), True)  # no reference to the first engine was left when it loaded
    assert Path(chat.manifest.path) == second.resolve() and chat.engine is loader.previous()
    assert chat.history == [] and chat.session is None


def test_unknown_model_leaves_the_current_one_alone(folders, monkeypatch):
    first, _ = folders
    loader = Loader()
    chat, output = start_chat(first, loader, monkeypatch)
    engine = chat.engine
    assert chat.command("/load no-such-model")
    assert chat.engine is engine and len(loader.calls) == 1
    assert "no-such-model" in output.getvalue() and "Loading" not in output.getvalue()


def test_failed_load_brings_the_current_model_back(folders, monkeypatch):
    first, second = folders
    loader = Loader()
    chat, output = start_chat(first, loader, monkeypatch)
    chat.history.append(object())  # type: ignore[arg-type]
    loader.broken.add(str(second))
    assert chat.command(f"/load {second}")
    assert [ref for ref, _ in loader.calls] == [str(first), str(second), str(first.resolve())]
    assert Path(chat.manifest.path) == first.resolve() and chat.engine is loader.previous()
    assert len(chat.history) == 1  # the conversation is kept, to be re-encoded on the next turn
    assert output.getvalue().count("\n") == 2, output.getvalue()  # 'Loading model ...' and a one-line error


def test_losing_both_models_ends_the_chat(folders, monkeypatch):
    first, second = folders
    loader = Loader()
    chat, _ = start_chat(first, loader, monkeypatch)
    loader.broken.update({str(second), str(first.resolve())})
    with pytest.raises(NoModelLoaded, match=r"could not load .* back either"):
        chat.command(f"/load {second}")
