"""`dgemma pull` end to end: the real executable against the fake hub, with this test's own store and HF cache."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from huggingface_hub import snapshot_download, try_to_load_from_cache

from dgemma_cli.units import human
from tests.support.pull import DGEMMA, NAME, NEVER, REPO, dgemma, failure, ok
from tests.support.quant_checkpoints import write_quantized

WEIGHTS = "model.safetensors"


def repo_folder(hf_cache: Path, repo_id: str = REPO) -> Path:
    return hf_cache / ("models--" + repo_id.replace("/", "--"))


def manifest(name: str = NAME, tag: str = "latest") -> dict:
    return json.loads((Path(os.environ["DGEMMA_MODELS"]) / "manifests" / name / f"{tag}.json").read_text())


def partial(hf_cache: Path, repo) -> Path:
    return repo_folder(hf_cache) / ".dgemma-partial" / f"{repo.etag(WEIGHTS)}.part"


def assert_intact(hf_cache: Path, repo) -> None:
    """Every file the runtime needs is in the snapshot, byte for byte what the hub has."""
    snapshot = repo_folder(hf_cache) / "snapshots" / repo.commit
    for path in ("config.json", "generation_config.json", "tokenizer.json", WEIGHTS):
        assert (snapshot / path).is_symlink(), path
        assert (snapshot / path).read_bytes() == repo.files[path], path


def test_pull_list_run_pull_again_rm(hub, repo, env, hf_cache):
    result = ok(dgemma(env, "pull", REPO))
    lines = result.stderr.splitlines()
    assert lines[0] == f"pulling {REPO} at {repo.commit[:12]} as '{NAME}'"
    assert lines[-2] == "verified 4 files: sizes and sha256 match the hub, 67 tensors match config.json"
    size = human(sum(len(data) for path, data in repo.files.items() if path not in NEVER))
    assert lines[-1].startswith(f"pulled '{NAME}' ({size}, {size} downloaded in ")
    assert result.stdout == ""

    # The standard cache layout, found by huggingface_hub itself; nothing the runtime does not read was fetched.
    assert_intact(hf_cache, repo)
    folder = repo_folder(hf_cache)
    assert (folder / "refs" / "main").read_text() == repo.commit
    assert snapshot_download(REPO, cache_dir=hf_cache, local_files_only=True) == str(folder / "snapshots" / repo.commit)
    assert try_to_load_from_cache(REPO, WEIGHTS, cache_dir=hf_cache) == str(
        folder / "snapshots" / repo.commit / WEIGHTS
    )
    assert not set(hub.file_requests()) & set(NEVER)
    stored = manifest()
    assert (stored["source"], stored["revision"], stored["path"]) == (
        f"hf:{REPO}",
        repo.commit,
        str(folder / "snapshots" / repo.commit),
    )
    assert {f["name"]: f["sha256"] for f in stored["files"]}[WEIGHTS] == hashlib.sha256(repo.files[WEIGHTS]).hexdigest()

    assert NAME in ok(dgemma(env, "list")).stdout
    assert ok(dgemma(env, "run", REPO, "hi", "--max-new-tokens", "16")).stdout.strip()

    hub.served = 0
    again = ok(dgemma(env, "pull", REPO))
    assert hub.served == 0
    assert again.stderr.splitlines()[-1] == f"pulled '{NAME}' ({size}, nothing to download): dgemma run {NAME}"

    ok(dgemma(env, "rm", NAME))
    assert not folder.exists()
    assert not (Path(os.environ["DGEMMA_MODELS"]) / "manifests" / NAME).exists()


def test_dropped_connection_is_resumed_by_the_next_pull(hub, repo, env, hf_cache):
    drop = len(repo.files[WEIGHTS]) // 2
    hub.drop_at[WEIGHTS] = drop  # every time: the first pull gives up after its own retries
    message = failure(dgemma(env, "pull", REPO))
    assert message.startswith(f"download of {WEIGHTS} kept failing")
    assert message.endswith(f"run 'dgemma pull {REPO}' to resume")
    kept = partial(hf_cache, repo).stat().st_size
    assert 0 < kept <= drop
    assert hub.ranges[-1] == (WEIGHTS, f"bytes={kept}-")  # the first pull already resumed, in vain

    hub.drop_at.clear()
    hub.ranges.clear()
    ok(dgemma(env, "pull", REPO))
    assert dict(hub.ranges)[WEIGHTS] == f"bytes={kept}-"
    assert_intact(hf_cache, repo)
    assert not partial(hf_cache, repo).exists()


def stop_mid_file(env, hf_cache, repo, sig: signal.Signals, after: int) -> subprocess.CompletedProcess[str]:
    """Start a pull and send it `sig` once its partial weights file holds at least `after` bytes."""
    process = subprocess.Popen(
        [DGEMMA, "pull", REPO], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not (partial(hf_cache, repo).exists() and partial(hf_cache, repo).stat().st_size >= after):
        assert process.poll() is None and time.monotonic() < deadline, "the pull ended before it could be stopped"
        time.sleep(0.05)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_interrupted_then_killed_pull_is_resumed(hub, repo, env, hf_cache):
    hub.rate = 1_000_000  # bytes/s: 4 s for the weights, time enough to stop a pull mid-file
    interrupted = stop_mid_file(env, hf_cache, repo, signal.SIGINT, after=300_000)
    assert interrupted.returncode == 130
    assert (
        interrupted.stderr.splitlines()[-1]
        == f"dgemma: interrupted; what has arrived is kept: 'dgemma pull {REPO}' resumes"
    )
    first = partial(hf_cache, repo).stat().st_size

    killed = stop_mid_file(env, hf_cache, repo, signal.SIGKILL, after=first + 300_000)
    assert killed.returncode == -signal.SIGKILL
    assert hub.ranges[-1] == (WEIGHTS, f"bytes={first}-")
    second = partial(hf_cache, repo).stat().st_size
    assert first < second < len(repo.files[WEIGHTS])

    hub.rate = None
    hub.ranges.clear()
    ok(dgemma(env, "pull", REPO))
    assert dict(hub.ranges)[WEIGHTS] == f"bytes={second}-"
    assert_intact(hf_cache, repo)


def test_corrupted_download_is_named_and_discarded(hub, repo, env, hf_cache):
    hub.corrupt.add(WEIGHTS)
    message = failure(dgemma(env, "pull", REPO))
    assert message.startswith(f"{WEIGHTS} arrived corrupted (sha256 ")
    assert not (repo_folder(hf_cache) / "blobs" / repo.etag(WEIGHTS)).exists()
    assert not partial(hf_cache, repo).exists()
    assert not (Path(os.environ["DGEMMA_MODELS"]) / "manifests" / NAME).exists()


def test_failures_are_one_clear_line(hub, checkpoint, env, hf_cache):
    hub.add_repo("acme/gated", checkpoint, gated=True)
    results = [
        dgemma(env, "pull", "acme/gated"),
        dgemma(env, "pull", "acme/nothing-here"),
        dgemma(env, "pull", f"{REPO}:v9"),
        dgemma(env | {"HF_HUB_OFFLINE": "1"}, "pull", REPO),
    ]
    assert all(result.stderr.count("\n") == 1 for result in results), [result.stderr for result in results]
    gated, unknown, revision, offline = (failure(result) for result in results)
    assert gated == (
        f"'acme/gated' is gated: accept its licence at {hub.url}/acme/gated "
        "and log in with 'hf auth login' or set HF_TOKEN"
    )
    assert unknown.startswith("model 'acme/nothing-here' not found on the Hugging Face hub")
    assert revision == f"revision 'v9' not found in '{REPO}' on the Hugging Face hub"
    assert offline == (
        f"HF_HUB_OFFLINE is set, and '{REPO}' is not in the Hugging Face cache ({hf_cache}): unset it to download"
    )
    assert not [r for r in hub.requests if r.startswith(f"GET /api/models/{REPO}?")]  # offline asked nothing


def test_hf_token_opens_a_gated_repo(hub, checkpoint, env):
    hub.add_repo("acme/gated", checkpoint, gated=True)
    ok(dgemma(env | {"HF_TOKEN": hub.token}, "pull", "acme/gated"))


def test_alias_pulls_its_repo(hub, checkpoint, env):
    hub.add_repo("RedHatAI/diffusiongemma-26B-A4B-it-FP8-dynamic", checkpoint)
    ok(dgemma(env, "pull", "diffusiongemma:26b-fp8"))
    assert manifest("diffusiongemma", "26b-fp8")["source"] == "hf:RedHatAI/diffusiongemma-26B-A4B-it-FP8-dynamic"


def test_a_quantized_checkpoint_is_validated_and_runs(hub, checkpoint, env, tmp_path):
    quantized = write_quantized(checkpoint, tmp_path / "nvfp4", "modelopt-nvfp4", dense=False)
    hub.add_repo("acme/Tiny-DGemma-NVFP4", quantized)
    result = ok(dgemma(env, "pull", "acme/Tiny-DGemma-NVFP4"))
    assert result.stderr.splitlines()[-2].endswith("tensors match config.json")  # per-expert NVFP4 names checked
    listed = next(line for line in ok(dgemma(env, "list")).stdout.splitlines() if "nvfp4" in line.lower())
    assert "acme--tiny-dgemma-nvfp4" in listed
    assert ok(dgemma(env, "run", "acme/Tiny-DGemma-NVFP4", "hi", "--max-new-tokens", "16")).stdout.strip()


def test_an_unsupported_quantization_stops_before_the_weights(hub, checkpoint, env, tmp_path):
    folder = tmp_path / "gptq"
    folder.mkdir()
    for path in checkpoint.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"quantization_config": {"quant_method": "gptq"}}))
    hub.add_repo("acme/Tiny-DGemma-GPTQ", folder)
    message = failure(dgemma(env, "pull", "acme/Tiny-DGemma-GPTQ"))
    assert "unsupported quantization: quant_method 'gptq'" in message
    assert WEIGHTS not in hub.file_requests()
