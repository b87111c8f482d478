"""The commands that need no model: `dgemma` alone, `--help`/`-h`, `--version`/`-v`, `list`, `ps`, none of which may
import torch, FastAPI, uvicorn or huggingface_hub (scripts/bench_cli_start.py times them)."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from tests.support.cli import assert_one_line_error, dgemma, ok
from tests.support.imports import heavy_imports


def test_dgemma_alone_prints_the_help_and_succeeds(env):
    result = ok(dgemma(env))
    assert "Usage: dgemma" in result.stdout and " ps " in result.stdout and " stop " in result.stdout


@pytest.mark.parametrize("flag", ["--version", "-v"])
def test_version(env, flag):
    assert ok(dgemma(env, flag)).stdout == f"dgemma version {version('dgemma')}\n"


@pytest.mark.parametrize("args", [("-h",), ("--help",), ("run", "-h"), ("serve", "-h")])
def test_help_has_a_short_flag(env, args):
    assert "Usage: dgemma" in ok(dgemma(env, *args)).stdout


def test_run_help_offers_json_keep_alive_and_says_what_format_is(env):
    shown = ok(dgemma(env, "run", "--help")).stdout
    for flag in ("--json", "--frames", "--keep-alive", "--format"):
        assert flag in shown, flag


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("list",), ("run", "--help"), ("bench", "--help")])
def test_commands_without_a_model_import_nothing_heavy(env, args):
    result, imported = heavy_imports(env, *args)
    assert result.returncode == 0, result.stderr
    assert imported == set()


def test_ps_without_a_server_is_one_line_and_imports_nothing_heavy(env):
    result, imported = heavy_imports(env, "ps")
    assert result.returncode == 1 and "no dgemma server answers" in result.stderr
    assert imported == set()
    assert_one_line_error(dgemma(env, "ps"), exit_code=1)
