"""The local store through the executable: list, run and show a stored model by name, rm it."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from dgemma_cli.models import store
from tests.support.cli import FAST, PROMPT, assert_one_line_error, dgemma, dgemma_env, facts, needs_builtin, ok

NOT_FOUND = "model 'mine' not found — see 'dgemma list', or 'dgemma pull mine'"


def store_as_mine(folder: Path, models: Path) -> None:
    """Store `folder` as 'mine' in the store at `models` (a local folder: the store points at it, never owns it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DGEMMA_MODELS", str(models))  # store.save writes where the subprocess will look
        store.save(store.Manifest(name="mine", tag="latest", path=str(folder), source="local"))


@pytest.fixture(scope="module")
def stored_env(model, tmp_path_factory) -> dict[str, str]:
    """A store holding 'mine', for the tests that only read it."""
    home = tmp_path_factory.mktemp("store-home")
    env = dgemma_env(home)
    store_as_mine(Path(shutil.copytree(model, home / "mine")), Path(env["DGEMMA_MODELS"]))
    return env


@pytest.fixture(scope="module")
def shown(stored_env) -> dict[str, str]:
    """`dgemma show mine`, as {label: value}."""
    result = ok(dgemma(stored_env, "show", "mine"))
    assert result.stderr == ""
    return facts(result.stdout)


@pytest.fixture
def mine(model_copy) -> Path:
    """'mine' in this test's own store, for the tests that change it."""
    store_as_mine(model_copy, Path(os.environ["DGEMMA_MODELS"]))
    return model_copy


def test_a_stored_model_runs_by_name(stored_env, oneshot):
    result = ok(dgemma(stored_env, "run", "mine", PROMPT, *FAST, "--seed", "1"))
    assert result.stdout == oneshot(1).stdout  # the very model in the folder


def test_show_describes_a_stored_model(shown, canvas):
    assert "total" in shown["parameters"] and "active" in shown["parameters"]
    assert shown["canvas length"] == str(canvas)
    assert shown["context length"] == "1024"
    assert re.match(r"[\d.]+ [KMGT]?B at a \d+-token context", shown["memory needed"]), shown["memory needed"]
    assert shown["source"] == "local"
    assert shown["quantization"] == "none (float32)"  # the test checkpoint is stored in float32
    assert re.fullmatch(r"[\d.]+ [KMGT]?B float32", shown["weights"]), shown["weights"]


def test_show_never_says_a_model_has_no_parameters(shown):
    assert not re.search(r"\b0\.0+B\b", shown["parameters"]), shown["parameters"]  # this model has 327k


@needs_builtin
def test_list_shows_the_builtin_and_stored_models_as_ollama_does(mine, env):
    header, *rows = ok(dgemma(env, "list")).stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    listed = {row.split()[0]: row.split(maxsplit=2)[1:] for row in rows}
    assert set(listed) == {"dgemma-tiny:latest", "mine:latest"}
    digest, rest = listed["mine:latest"]
    assert digest == store.lookup("mine").digest[:12]  # the ID /api/tags and /api/ps report in full
    assert re.fullmatch(r"[\d.]+ [KMG]?B +(Less than a second|\d+ seconds?) ago", rest.strip()), rest  # just stored


@needs_builtin
def test_rm_forgets_a_stored_model_but_keeps_its_local_folder(mine, env):
    result = ok(dgemma(env, "rm", "mine"))
    assert "deleted 'mine'" in result.stderr
    assert NOT_FOUND in assert_one_line_error(dgemma(env, "run", "mine", PROMPT, *FAST), exit_code=1)
    assert (mine / "model.safetensors").exists()  # a 'local' model's folder is the user's, not the store's
    again = assert_one_line_error(dgemma(env, "rm", "mine"), exit_code=1)
    assert again == "model 'mine' not found — see 'dgemma list'"  # pulling it would not help to remove it
