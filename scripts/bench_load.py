"""How fast `dgemma_runtime.load` reads a checkpoint, against simply reading the same files in the same run.

    python scripts/bench_load.py [--gb 2] [--runs 3] [--dir DIR] [--device cuda]
    python scripts/bench_load.py --dry-run        # a few MB, seconds: every path once (CI runs it)

Writes a synthetic checkpoint of about --gb GB with the released layout scaled down (128 experts, the released
sliding/full layer pattern, sharded safetensors with an index): a bf16 one (fused experts, as transformers saves
it) and its NVFP4 variant (compressed-tensors, experts and dense linears one by one). Random bytes: loading never
looks at the values. Then, best of --runs, the rows alternating so that the machine's noise falls on all alike:

- read: every shard read start to end into one reused buffer (the disk, or the page cache, and nothing else);
- load: `dgemma_runtime.load(..., device=--device, dtype="bfloat16")` of each checkpoint, until the engine is ready
  (on a GPU: every weight there, the quantization kernels finished);
- quantize-at-load: the bf16 checkpoint with `quant="fp8"` and `quant="nvfp4"`, in GB/s of bf16 read.

"cold" rows first drop the shards from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`: no privileges needed,
but pages another process maps may stay), "warm" rows find them there. The last line sums up, from the cold rows
where the page cache could be dropped (loading at disk speed is the aim), else the warm ones:
`load: bf16 R1x, prequantized R2x of the read rate, quantize-at-load Q GB/s` (the slower of fp8 and nvfp4). On a
machine shared with others, OMP_NUM_THREADS=1 keeps torch's threads from waiting on each other.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dgemma_runtime
import torch
from dgemma_runtime.config import FULL, RELEASED_TEXT_CONFIG, SLIDING, parse_config
from dgemma_runtime.weights import expected_shapes
from safetensors.torch import save_file

# The released text config with every width halved (head dims too), the vocabulary cut to 64k and the layer count
# left to --gb; experts, top-k and the layer pattern stay as released.
SCALED = RELEASED_TEXT_CONFIG | {
    "vocab_size": 65536,
    "hidden_size": 1408,
    "intermediate_size": 1056,
    "moe_intermediate_size": 352,
    "num_attention_heads": 8,
    "head_dim": 128,
    "global_head_dim": 256,
    "max_position_embeddings": 8192,
}
# --dry-run: the same layout, small enough to write and load in well under a second.
TINY = SCALED | {
    "vocab_size": 1024,
    "hidden_size": 128,
    "intermediate_size": 96,
    "moe_intermediate_size": 32,
    "num_experts": 16,
    "top_k_experts": 2,
    "head_dim": 16,
    "global_head_dim": 32,
}
SHARDS = 8  # the released checkpoints come in several shards; loading may read them side by side
NVFP4_CONFIG = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"}


def bf16_shapes(text: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of a bf16 checkpoint of this text config, as the runtime expects them."""
    return expected_shapes(parse_config({"model_type": "diffusion_gemma", "text_config": text}))


def text_config(base: dict, gb: float) -> dict:
    """`base` with as many layers as make about `gb` GB of bf16 weights (at least 2: one sliding, one full)."""

    def nbytes(layers: int) -> int:
        pattern = ([SLIDING] * 5 + [FULL])[:layers]
        shapes = bf16_shapes(base | {"num_hidden_layers": layers, "layer_types": pattern})
        return 2 * sum(math.prod(shape) for shape in shapes.values())

    per_layer = nbytes(2) - nbytes(1)
    layers = max(2, round((gb * 1e9 - (nbytes(1) - per_layer)) / per_layer))
    return base | {"num_hidden_layers": layers, "layer_types": (([SLIDING] * 5 + [FULL]) * (layers // 6 + 1))[:layers]}


def bf16_tensors(text: dict, generator: torch.Generator) -> Iterator[tuple[str, torch.Tensor]]:
    for name, shape in bf16_shapes(text).items():
        yield name, (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)


def nvfp4_tensors(text: dict, generator: torch.Generator) -> Iterator[tuple[str, torch.Tensor]]:
    """The NVFP4 variant: experts apart and quantized, attention and dense MLP quantized, the rest as bf16."""

    def nvfp4(base: str, N: int, K: int) -> Iterator[tuple[str, torch.Tensor]]:
        yield f"{base}.weight_packed", torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, generator=generator)
        scales = torch.randint(0x08, 0x78, (N, K // 16), dtype=torch.uint8, generator=generator)  # finite, > 0
        yield f"{base}.weight_scale", scales.view(torch.float8_e4m3fn)
        yield f"{base}.weight_global_scale", torch.tensor([1000.0])

    for name, shape in bf16_shapes(text).items():
        if name.endswith("experts.gate_up_proj"):
            E, N2, K = shape
            for e in range(E):
                for proj in ("gate_proj", "up_proj"):
                    yield from nvfp4(f"{name.rsplit('.', 1)[0]}.{e}.{proj}", N2 // 2, K)
        elif name.endswith("experts.down_proj"):
            E, N, K = shape
            for e in range(E):
                yield from nvfp4(f"{name.rsplit('.', 1)[0]}.{e}.down_proj", N, K)
        elif name.endswith("_proj.weight") and (".self_attn." in name or ".mlp." in name):
            yield from nvfp4(name.removesuffix(".weight"), *shape)
        else:
            yield name, (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)


def write_checkpoint(folder: Path, text: dict, tensors: Iterator[tuple[str, torch.Tensor]], quant: dict | None) -> Path:
    """Sharded safetensors in name order, as `save_pretrained` shards them, with the index; synced to disk so the
    page cache can drop them."""
    folder.mkdir(parents=True, exist_ok=True)
    items = sorted(tensors, key=lambda item: item[0])
    total = sum(t.nbytes for _, t in items)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    count = 0

    def flush() -> None:
        nonlocal shard, count
        count += 1
        name = f"model-{count:05d}.safetensors"
        save_file(shard, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard = {}

    for name, tensor in items:
        shard[name] = tensor
        if sum(t.nbytes for t in shard.values()) >= total / SHARDS:
            flush()
    if shard:
        flush()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {"model_type": "diffusion_gemma", "canvas_length": 256, "text_config": text}
    if quant is not None:
        config["quantization_config"] = quant
    (folder / "config.json").write_text(json.dumps(config))
    for path in shards(folder):
        with path.open("rb+") as file:
            os.fsync(file.fileno())
    return folder


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def drop_cache(folder: Path) -> None:
    """Ask the kernel to forget the shards' pages (clean ones go; a page mapped elsewhere may stay)."""
    for path in shards(folder):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_files(folder: Path) -> int:
    """Every shard start to end into one reused 16 MB buffer: the rate a load is measured against."""
    buffer = memoryview(bytearray(16 << 20))
    total = 0
    for path in shards(folder):
        with path.open("rb", buffering=0) as file:
            while n := file.readinto(buffer):
                total += n
    return total


def load(folder: Path, device: str, quant: str | None = None) -> dgemma_runtime.Engine:
    engine = dgemma_runtime.load(folder, device=device, dtype="bfloat16", quant=quant)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()  # quantizing on the GPU runs asynchronously: ready means done
    return engine


def timed(run: Callable[[], object], folder: Path, cold: bool) -> float:
    """Seconds `run` takes, from a cold or a warm page cache; what it returns is let go after the clock stops."""
    if cold:
        drop_cache(folder)
    else:
        read_files(folder)  # every page in the cache
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    del result
    dgemma_runtime.reclaim()
    return seconds


COLD = hasattr(os, "posix_fadvise")  # Linux: the page cache can be asked to forget a file
FROM_DISK = ("read bf16", "load bf16", "read nvfp4", "load nvfp4")  # the rows measured cold too


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0, help="size of the bf16 checkpoint in GB")
    parser.add_argument("--runs", type=int, default=3, help="best of this many runs per row")
    parser.add_argument("--dir", type=Path, help="where to write the checkpoints (default: a temporary folder)")
    parser.add_argument("--dry-run", action="store_true", help="a few MB, one run: every path, in seconds")
    parser.add_argument("--device", default="cpu", help="where the weights go: cpu (default) or cuda")
    args = parser.parse_args()
    base, gb, runs = (TINY, 0.005, 1) if args.dry_run else (SCALED, args.gb, args.runs)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        text = text_config(base, gb)
        generator = torch.Generator().manual_seed(0)
        bf16 = write_checkpoint(Path(tmp) / "bf16", text, bf16_tensors(text, generator), None)
        nvfp4 = write_checkpoint(Path(tmp) / "nvfp4", text, nvfp4_tensors(text, generator), NVFP4_CONFIG)
        size = {f: sum(p.stat().st_size for p in shards(f)) for f in (bf16, nvfp4)}
        print(
            f"checkpoints: bf16 {size[bf16] / 1e9:.2f} GB, nvfp4 {size[nvfp4] / 1e9:.2f} GB; "
            f"{text['num_hidden_layers']} layers, {text['num_experts']} experts, {len(shards(bf16))} shards; "
            f"{torch.get_num_threads()} torch threads, device {args.device}, best of {runs}"
        )
        rows: dict[str, tuple[Path, Callable[[], object]]] = {
            "read bf16": (bf16, lambda: read_files(bf16)),
            "load bf16": (bf16, lambda: load(bf16, args.device)),
            "read nvfp4": (nvfp4, lambda: read_files(nvfp4)),
            "load nvfp4": (nvfp4, lambda: load(nvfp4, args.device)),
            # What building weights in new memory costs at all (page faults): the ceiling of any load whose weights
            # are not the checkpoint's own bytes, as prequantized experts stacked from pieces are not.
            "new memory, nvfp4 size": (nvfp4, lambda: torch.ones(size[nvfp4], dtype=torch.uint8)),
            "load bf16 --quant fp8": (bf16, lambda: load(bf16, args.device, "fp8")),
            "load bf16 --quant nvfp4": (bf16, lambda: load(bf16, args.device, "nvfp4")),
        }
        load(nvfp4, args.device)  # once untimed: the first load in a process pays for imports and first calls
        caches = ("cold", "warm") if COLD else ("warm",)
        best: dict[tuple[str, str], float] = {}
        for _ in range(runs):  # rows alternate, so that the machine's noise falls on all of them alike
            for cache in caches:
                for label, (folder, run) in rows.items():
                    if cache == "cold" and label not in FROM_DISK:
                        continue  # bound by the CPU or the memory, not by where the bytes come from
                    seconds = timed(run, folder, cold=cache == "cold")
                    best[label, cache] = min(best.get((label, cache), math.inf), seconds)
        for (label, cache), seconds in best.items():
            folder = rows[label][0]
            print(f"{cache} {label:24s} {seconds:7.3f} s  {size[folder] / seconds / 1e9:6.2f} GB/s")

        cache = caches[0]  # from the disk where the page cache can be dropped: loading at disk speed is the aim
        bf16_ratio = best["read bf16", cache] / best["load bf16", cache]
        prequantized = best["read nvfp4", cache] / best["load nvfp4", cache]
        quantize = min(size[bf16] / best[f"load bf16 --quant {q}", "warm"] for q in ("fp8", "nvfp4")) / 1e9
        print(
            f"load: bf16 {bf16_ratio:.2f}x, prequantized {prequantized:.2f}x of the read rate, "
            f"quantize-at-load {quantize:.2f} GB/s"
        )


if __name__ == "__main__":
    main()
