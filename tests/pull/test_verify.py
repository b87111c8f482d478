"""Trusting the cache only as far as it was checked: a re-pull hashes what it claims, repairs a file corrupted in
place, and `pull --verify` / `show --verify` run the full check (sha256 of every file, shared-weight copies byte
for byte)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from dgemma_cli.models import pull
from dgemma_cli.models.hub import target
from dgemma_cli.units import human
from tests.pull.test_parts import online  # noqa: F401 - a fixture
from tests.pull.test_pull import WEIGHTS, assert_intact, repo_folder
from tests.support.cli import assert_one_line_error
from tests.support.pull import NAME, REPO, dgemma, failure, ok
from tests.support.quant_checkpoints import DECODER, ENCODER_TEXT, relayout


def corrupt_in_place(hf_cache: Path, repo) -> None:
    """Flip one byte in the middle of the cached weights (tensor data, not the header): same size, same name."""
    blob = repo_folder(hf_cache) / "blobs" / repo.etag(WEIGHTS)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))


def flip_byte(folder: Path, name: str, at: int) -> None:
    """Change one byte of tensor `name` in place, `at` bytes into its data."""
    path = folder / WEIGHTS
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[:8], "little")
    data[8 + size + json.loads(data[8 : 8 + size])[name]["data_offsets"][0] + at] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_re_pull_repairs_a_file_corrupted_in_place(hub, repo, env, hf_cache):
    ok(dgemma(env, "pull", REPO))
    corrupt_in_place(hf_cache, repo)
    hub.ranges.clear()

    result = ok(dgemma(env, "pull", REPO))
    lines = result.stderr.splitlines()
    got = hashlib.sha256((repo_folder(hf_cache) / "blobs" / repo.etag(WEIGHTS)).read_bytes())  # repaired by now
    assert got.hexdigest() == repo.etag(WEIGHTS)
    assert any(
        line.startswith(f"{WEIGHTS} in the cache is corrupted (sha256 ") and line.endswith("downloading it again")
        for line in lines
    ), result.stderr
    assert hub.file_requests() == [WEIGHTS]  # only the corrupt file came again, in full
    assert "verified 4 files: sizes and sha256 match the hub" in result.stderr
    assert f"{human(len(repo.files[WEIGHTS]))} downloaded in " in lines[-1]  # not "nothing to download"
    assert_intact(hf_cache, repo)


@pytest.mark.usefixtures("online")
def test_an_intact_re_pull_hashes_every_cached_file_and_downloads_nothing(hub, hf_cache):
    goal = target(REPO)
    list(pull.pull_model(goal, cache_dir=hf_cache, endpoint=hub.url))
    hub.served = 0
    events = list(pull.pull_model(goal, cache_dir=hf_cache, endpoint=hub.url))
    size = len(hub.repos[REPO].files[WEIGHTS])
    hashed = {e.path for e in events if isinstance(e, pull.Checking) and e.done == e.size}
    assert hashed == {"config.json", "generation_config.json", "tokenizer.json", WEIGHTS}
    assert pull.Checking(f"checking {WEIGHTS}", WEIGHTS, size, 0) in events  # progress from the start
    assert events[-2] == pull.Verified(files=4, tensors=67, hashes=True)
    assert (hub.served, events[-1].downloaded) == (0, 0)


def test_show_verify_and_pull_verify_find_a_flipped_byte(hub, repo, env, hf_cache):
    ok(dgemma(env, "pull", REPO))
    shown = ok(dgemma(env, "show", NAME, "--verify"))
    assert shown.stdout.splitlines()[-1] == (
        "OK: 4 files match the sha256 recorded when it was pulled, 67 tensors match config.json, "
        "0 shared-weight copies identical byte for byte"
    )

    corrupt_in_place(hf_cache, repo)
    message = assert_one_line_error(dgemma(env, "show", NAME, "--verify"), exit_code=1)
    recorded = repo.etag(WEIGHTS)[:16]
    assert message.startswith(f"{WEIGHTS}: sha256 ") and f"the manifest records {recorded}…" in message

    verified = ok(dgemma(env, "pull", REPO, "--verify"))
    assert f"{WEIGHTS} in the cache is corrupted" in verified.stderr
    assert verified.stderr.splitlines()[-2] == (
        "verified 4 files: sizes and sha256 match the hub, 67 tensors match config.json, "
        "0 shared-weight copies identical byte for byte"
    )
    ok(dgemma(env, "show", NAME, "--verify"))


def test_pull_verify_offline_hashes_the_cache_and_names_a_corrupt_file(hub, repo, env, hf_cache):
    ok(dgemma(env, "pull", REPO))
    offline = env | {"HF_HUB_OFFLINE": "1"}
    assert "hashed 2 cached files" in ok(dgemma(offline, "pull", REPO, "--verify")).stderr
    assert "sha256" not in ok(dgemma(offline, "pull", REPO)).stderr  # nothing hashed, nothing claimed

    corrupt_in_place(hf_cache, repo)
    message = failure(dgemma(offline, "pull", REPO, "--verify"))
    assert message.startswith(f"{WEIGHTS} in the cache is corrupted (sha256 ")
    assert message.endswith(f"run 'dgemma pull {REPO}' online to download it again")


def test_show_verify_compares_shared_weight_copies_in_full(checkpoint, env, tmp_path):
    folder = relayout(Path(shutil.copytree(checkpoint, tmp_path / "both")), "both")
    shown = ok(dgemma(env, "show", str(folder), "--verify")).stdout.splitlines()[-1]
    assert shown.startswith("OK: no sha256 recorded (not pulled: files not hashed), 67 tensors match config.json, ")
    copies = int(shown.split(", ")[-1].split()[0])
    assert copies > 0

    name = f"{ENCODER_TEXT}embed_tokens.weight"
    flip_byte(folder, name, at=10_000)  # past the first sampled span: loading alone would not notice
    message = assert_one_line_error(dgemma(env, "show", str(folder), "--verify"), exit_code=1)
    assert message == f"{name}: bytes differ from {DECODER}embed_tokens.weight, the weight it shares"
