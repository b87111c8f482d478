"""The parts of `dgemma pull`, in-process: names, file selection, disk space, the resumable transfer, sharing the
cache with huggingface_hub, pulling from the cache alone, `rm` of a snapshot two names share, and repos that hold
shards or are not DiffusionGemma at all."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from dgemma_runtime import UnsupportedModelError, detect_scheme
from huggingface_hub import constants, hf_hub_download, hf_hub_url
from huggingface_hub.utils import build_hf_headers, close_session
from safetensors.torch import load_file, save_file

from dgemma_cli.errors import UsageProblem
from dgemma_cli.models import pull, store
from dgemma_cli.models.cache import RepoCache
from dgemma_cli.models.hub import HubError, target
from dgemma_cli.models.transfer import Digest, fetch
from tests.support.pull import NAME, PROXIES, REPO

WEIGHTS = "model.safetensors"


@pytest.fixture
def online(monkeypatch) -> Iterator[None]:
    """huggingface_hub's shared client, allowed out (to 127.0.0.1 only) and rebuilt without proxies."""
    for name in (*PROXIES, "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    close_session()
    yield
    close_session()


# -- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "revision", "expected"),
    [
        ("diffusiongemma", None, ("google/diffusiongemma-26B-A4B-it", None, "diffusiongemma", "latest")),
        ("diffusiongemma:26b", None, ("google/diffusiongemma-26B-A4B-it", None, "diffusiongemma", "26b")),
        (
            "diffusiongemma:26b-fp8",
            None,
            ("RedHatAI/diffusiongemma-26B-A4B-it-FP8-dynamic", None, "diffusiongemma", "26b-fp8"),
        ),
        (
            "diffusiongemma:26b-nvfp4",
            None,
            ("nvidia/diffusiongemma-26B-A4B-it-NVFP4", None, "diffusiongemma", "26b-nvfp4"),
        ),
        ("acme/Tiny-DGemma", None, ("acme/Tiny-DGemma", None, "acme--tiny-dgemma", "latest")),
        ("hf.co/acme/Tiny-DGemma:v1.0", None, ("acme/Tiny-DGemma", "v1.0", "acme--tiny-dgemma", "v1.0")),
        ("https://huggingface.co/acme/x/", None, ("acme/x", None, "acme--x", "latest")),
        ("acme/x", "refs/pr/1", ("acme/x", "refs/pr/1", "acme--x", "refs-pr-1")),
        ("acme/x:main", None, ("acme/x", "main", "acme--x", "latest")),
    ],
)
def test_names(spec, revision, expected):
    goal = target(spec, revision)
    assert (goal.repo_id, goal.revision, goal.name, goal.tag) == expected


def test_resume_hint_repeats_the_command():
    assert target("acme/x", "v2").again == "dgemma pull acme/x --revision v2"
    assert target("diffusiongemma:26b").again == "dgemma pull diffusiongemma:26b"


def test_bad_names_are_one_clear_line():
    with pytest.raises(HubError, match=r"^unknown model 'llama3': pull one of diffusiongemma, .* or a Hugging Face"):
        target("llama3")
    with pytest.raises(HubError, match="'dgemma-tiny' is built into dgemma and cannot be pulled"):
        target("dgemma-tiny")
    with pytest.raises(UsageProblem, match="names revision 'v1' and --revision says 'v2'"):
        target("acme/x:v1", "v2")


def test_a_pulled_repo_is_found_by_its_repo_id(tmp_path):
    store.save(store.Manifest(name=NAME, tag="v1", path=str(tmp_path), source=f"hf:{REPO}"))
    assert store.resolve(f"hf.co/{REPO}:v1").name == NAME
    with pytest.raises(store.ModelNotFound):
        store.resolve(REPO)  # :latest was never pulled


# -- what is fetched -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
     "special_tokens_map.json", "model.safetensors.index.json", "hf_quant_config.json", "quantization_config.json"],
)  # fmt: skip
def test_wanted(path):
    assert pull.wanted(path)


@pytest.mark.parametrize(
    "path",
    ["model.gguf", "pytorch_model.bin", "model.pt", "model.pth", "optimizer.pkl", "README.md", "original/config.json",
     "model.safetensors"],  # weights are picked from the shard index, not by name
)  # fmt: skip
def test_not_wanted(path):
    assert not pull.wanted(path)


def test_quantization_is_read_from_the_configs(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({}))
    assert detect_scheme(tmp_path) is None
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "NVFP4"}}))
    assert detect_scheme(tmp_path).precision == "nvfp4"
    quantized = {"quantization_config": {"quant_method": "compressed-tensors", "format": "float-quantized"}}
    (tmp_path / "config.json").write_text(json.dumps(quantized))
    assert detect_scheme(tmp_path).precision == "fp8"


def test_not_enough_disk_space(monkeypatch, tmp_path):
    monkeypatch.setattr(pull.shutil, "disk_usage", lambda path: SimpleNamespace(free=10**9))
    with pytest.raises(pull.PullError, match=r"^not enough disk space in .*: need 2.0 GB, have 1.0 GB$"):
        pull.check_space(tmp_path / "not" / "there", 2 * 10**9)
    pull.check_space(tmp_path, 10**9)


# -- the transfer ----------------------------------------------------------------------------------


def test_fetch_resumes_a_partial_file_with_a_range_request(hub, repo, online, tmp_path):
    data = repo.files[WEIGHTS]
    url = hf_hub_url(REPO, WEIGHTS, revision=repo.commit, endpoint=hub.url)
    part = tmp_path / "weights.part"
    part.write_bytes(data[:123_456])
    digest = Digest()
    assert list(fetch(url, build_hf_headers(), part, len(data), digest))[-1] == len(data)
    assert hub.ranges == [(WEIGHTS, "bytes=123456-")]
    assert hub.served == len(data) - 123_456
    assert part.read_bytes() == data
    assert digest.sha256.hexdigest() == hashlib.sha256(data).hexdigest()


def test_fetch_starts_over_when_the_server_ignores_the_range(hub, repo, online, tmp_path):
    data = repo.files["config.json"]
    url = hf_hub_url(REPO, "config.json", revision=repo.commit, endpoint=hub.url)
    part = tmp_path / "config.part"
    part.write_bytes(b"stale bytes")
    hub.ignore_range = True
    digest = Digest(git_size=len(data))
    list(fetch(url, build_hf_headers(), part, len(data), digest))
    assert part.read_bytes() == data
    assert digest.git is not None and digest.git.hexdigest() == repo.sibling("config.json")["blobId"]


# -- the cache -------------------------------------------------------------------------------------


def test_a_cached_model_is_pulled_without_the_hub(hub, repo, online, hf_cache, monkeypatch):
    pulled = list(pull.pull_model(target(REPO), cache_dir=hf_cache, endpoint=hub.url))[-1].manifest
    unreachable = list(pull.pull_model(target(REPO), cache_dir=hf_cache, endpoint="http://127.0.0.1:1"))
    assert unreachable[1].text.startswith("cannot reach the Hugging Face hub at http://127.0.0.1:1 (")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.requests.clear()
    offline = list(pull.pull_model(target(REPO), cache_dir=hf_cache, endpoint=hub.url))
    assert offline[1] == pull.Note("HF_HUB_OFFLINE is set: using the cached snapshot")
    assert hub.requests == []
    for events in (unreachable, offline):
        again = events[-1].manifest
        assert (again.path, again.revision, again.files) == (pulled.path, pulled.revision, pulled.files)


def test_files_huggingface_hub_fetched_are_not_fetched_again(hub, online, hf_cache):
    for path in ("config.json", "generation_config.json", "tokenizer.json", WEIGHTS):
        hf_hub_download(REPO, path, cache_dir=hf_cache, endpoint=hub.url)
    hub.served = 0
    assert list(pull.pull_model(target(REPO), cache_dir=hf_cache, endpoint=hub.url))[-1].downloaded == 0
    assert hub.served == 0


def test_rm_keeps_a_snapshot_another_name_uses(hf_cache):
    cache = RepoCache(hf_cache, REPO)
    for commit, files in (("a" * 40, {"config.json": "c1", WEIGHTS: "shared"}), ("b" * 40, {WEIGHTS: "shared"})):
        for path, etag in files.items():
            if not cache.blob(etag).exists():
                cache.blob(etag).parent.mkdir(parents=True, exist_ok=True)
                cache.blob(etag).write_text(etag)
            cache.link(commit, path, etag)
    cache.write_ref("main", "a" * 40)
    cache.write_ref("v0", "b" * 40)
    for tag in ("latest", "26b"):
        store.save(store.Manifest(name="diffusiongemma", tag=tag, path=str(cache.snapshot("a" * 40)), source="hf:x/y"))

    store.remove("diffusiongemma:26b")
    assert (cache.snapshot("a" * 40) / WEIGHTS).read_text() == "shared"

    store.remove("diffusiongemma")
    assert not cache.snapshot("a" * 40).exists()
    assert not cache.blob("c1").exists() and not (cache.root / "refs" / "main").exists()
    assert (cache.snapshot("b" * 40) / WEIGHTS).read_text() == "shared"  # another revision still links it
    assert (cache.root / "refs" / "v0").read_text() == "b" * 40


# -- what a repo holds -----------------------------------------------------------------------------


@pytest.fixture
def sharded(checkpoint, tmp_path) -> Path:
    """The checkpoint as two shards and an index, beside a stray consolidated file the index does not name."""
    folder = tmp_path / "sharded"
    folder.mkdir()
    for path in checkpoint.iterdir():
        if path.name != WEIGHTS:
            (folder / path.name).write_bytes(path.read_bytes())
    tensors = load_file(checkpoint / WEIGHTS)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, members in shards.items():
        save_file({n: tensors[n] for n in members}, folder / shard)
    weight_map = {n: shard for shard, members in shards.items() for n in members}
    (folder / pull.INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    save_file({"x": tensors[names[0]]}, folder / "consolidated.safetensors")
    return folder


def test_only_the_shards_the_index_names_are_fetched(hub, online, hf_cache, sharded):
    hub.add_repo("acme/sharded", sharded)
    events = list(pull.pull_model(target("acme/sharded"), cache_dir=hf_cache, endpoint=hub.url))
    assert hub.file_requests()[:2] == ["config.json", pull.INDEX]
    assert "consolidated.safetensors" not in hub.file_requests()
    assert events[-2] == pull.Verified(files=6, tensors=67, hashes=True)
    assert [f["name"] for f in events[-1].manifest.files if f["name"].startswith("model-")] == sorted(
        ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    )


def test_a_repo_that_is_not_diffusiongemma_stops_before_the_weights(hub, online, hf_cache, checkpoint, tmp_path):
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / WEIGHTS).write_bytes((checkpoint / WEIGHTS).read_bytes())
    hub.add_repo("acme/llama", folder)
    with pytest.raises(UnsupportedModelError, match="model_type 'llama'"):
        list(pull.pull_model(target("acme/llama"), cache_dir=hf_cache, endpoint=hub.url))
    assert hub.file_requests() == ["config.json"]
