"""`dgemma bench`: the numbers it reports are present and agree with each other."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import assert_one_line_error, dgemma, ok


@pytest.fixture(scope="module")
def report(model, shared_env) -> dict:
    result = ok(dgemma(shared_env, "bench", str(model), "--runs", "2", "--max-new-tokens", "32", "--json"))
    return json.loads(result.stdout)


def test_every_run_reports_consistent_rates(report):
    assert len(report["runs"]) == 2
    for run in report["runs"]:
        assert run["tokens_per_forward"] == pytest.approx(run["generated_tokens"] / run["decoder_forwards"])
        assert run["encode_share"] + run["decode_share"] + run["sample_share"] == pytest.approx(1.0)
        assert 0 < run["step_latency_p50"] <= run["step_latency_p90"]
        assert run["decode_tokens_per_second"] > 0 and run["time_to_first_token"] > 0
        # In-step leaves the encoder's time out of the same tokens' rate: never slower than effective.
        assert run["in_step_tokens_per_second"] >= run["decode_tokens_per_second"]
    low, high = sorted(r["tokens_per_forward"] for r in report["runs"])
    assert report["median"]["tokens_per_forward"] == pytest.approx((low + high) / 2)
    assert report["peak_process_bytes"] > 0 and report["device"] == "cpu"


def test_the_report_states_quantization_and_weight_memory(report):
    assert report["quantization"] == "none (float32)"
    assert report["kernels"] == "PyTorch (CPU)"
    assert set(report["weight_bytes"]) == {"float32"} and report["weight_bytes"]["float32"] > 0


def test_fixed_steps_runs_every_step(model, shared_env):
    result = ok(
        dgemma(
            shared_env,
            "bench",
            str(model),
            "--runs",
            "1",
            "--max-new-tokens",
            "16",
            "--steps",
            "5",
            "--fixed-steps",
            "--json",
        )
    )
    (run,) = json.loads(result.stdout)["runs"]
    assert run["steps_per_canvas"] == 5
    assert run["decoder_forwards"] == 5


def test_a_budget_shorter_than_a_canvas_is_warned_about(model, shared_env, canvas):
    result = ok(dgemma(shared_env, "bench", str(model), "--runs", "1", "--max-new-tokens", str(canvas // 2)))
    assert "shorter than a canvas" in result.stderr
    assert "tokens per forward" in result.stdout
    assert "decode tok/s (effective)" in result.stdout and "decode tok/s (in-step)" in result.stdout


def test_an_empty_prompts_file_is_refused(model, shared_env, tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n")
    assert_one_line_error(dgemma(shared_env, "bench", str(model), "--prompts", str(empty)), exit_code=2)
