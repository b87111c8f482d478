"""Safetensors checkpoints: the tensors a config implies, validated before anything is allocated.

Checkpoint keys follow transformers' `save_pretrained` (§2.3): the shared text weights live under
`model.decoder.*`; the encoder contributes only its own `layer_scalar`s; a vision tower, when the checkpoint has
one, is read as stored (never quantized, like the published quantized checkpoints keep it). The shared
weights may also be stored under the encoder's names (`model.encoder.language_model.*`), alone or as a second
copy: `save_pretrained` of a compressed-tensors model writes every quantized tensor under both prefixes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from dgemma_kernels import QuantizedWeight
from safetensors import SafetensorError, safe_open

from .config import TextConfig
from .errors import CheckpointError
from .loading import LoadReporter, Phase
from .quantization import (
    QuantScheme,
    StoredLinear,
    TensorInfo,
    assemble,
    build_linear,
    is_activation_scale,
    stored_linear,
)
from .reading import ReadAhead, Stacks, UnitReads
from .vision import VISION_PREFIXES, VisionConfig, vision_module_name, vision_shapes

DECODER = "model.decoder."
ENCODER_TEXT = "model.encoder.language_model."
ENCODER_LAYERS = f"{ENCODER_TEXT}layers."
SKIPPED_PREFIXES = (*VISION_PREFIXES, "lm_head.")  # not text weights: lm_head is tied, vision is planned apart


def expected_shapes(config: TextConfig) -> dict[str, tuple[int, ...]]:
    """Every text tensor a checkpoint of this config must hold, by its checkpoint name."""
    H, V, Id, E, Ie = (
        config.hidden_size,
        config.vocab_size,
        config.intermediate_size,  # dense MLP width
        config.num_experts,
        config.moe_intermediate_size,  # expert width
    )
    shapes: dict[str, tuple[int, ...]] = {
        f"{DECODER}embed_tokens.weight": (V, H),
        f"{DECODER}norm.weight": (H,),
        f"{DECODER}self_conditioning.pre_norm.weight": (H,),
        f"{DECODER}self_conditioning.gate_proj.weight": (Id, H),
        f"{DECODER}self_conditioning.up_proj.weight": (Id, H),
        f"{DECODER}self_conditioning.down_proj.weight": (H, Id),
    }
    for i, spec in enumerate(config.layers):
        p = f"{DECODER}layers.{i}."
        q_width, kv_width = config.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        layer = {
            "input_layernorm.weight": (H,),
            "self_attn.q_proj.weight": (q_width, H),
            "self_attn.k_proj.weight": (kv_width, H),
            "self_attn.o_proj.weight": (H, q_width),
            "self_attn.q_norm.weight": (spec.head_dim,),
            "self_attn.k_norm.weight": (spec.head_dim,),
            "post_attention_layernorm.weight": (H,),
            "pre_feedforward_layernorm.weight": (H,),
            "mlp.gate_proj.weight": (Id, H),
            "mlp.up_proj.weight": (Id, H),
            "mlp.down_proj.weight": (H, Id),
            "post_feedforward_layernorm_1.weight": (H,),
            "router.proj.weight": (E, H),
            "router.scale": (H,),
            "router.per_expert_scale": (E,),
            "pre_feedforward_layernorm_2.weight": (H,),
            "experts.gate_up_proj": (E, 2 * Ie, H),
            "experts.down_proj": (E, H, Ie),
            "post_feedforward_layernorm_2.weight": (H,),
            "post_feedforward_layernorm.weight": (H,),
            "layer_scalar": (1,),
        }
        if spec.has_v_proj:
            layer["self_attn.v_proj.weight"] = (kv_width, H)
        shapes.update({p + name: shape for name, shape in layer.items()})
        shapes[f"{ENCODER_LAYERS}{i}.layer_scalar"] = (1,)
    return shapes


def module_name(checkpoint_name: str) -> str:
    """Checkpoint name -> parameter name in `model.DiffusionGemma` (one shared stack, two scalar sets)."""
    if checkpoint_name.startswith(ENCODER_LAYERS):
        index = checkpoint_name[len(ENCODER_LAYERS) :].split(".")[0]
        return f"layers.{index}.encoder_scalar"
    return checkpoint_name[len(DECODER) :]


def shard_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: the index's shards, or the single model.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: malformed shard index ({exc})") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
    elif (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]
    elif any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise CheckpointError(f"{folder}: only pickled weights (.bin/.pt); dgemma loads safetensors only")
    else:
        raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise CheckpointError(f"{folder}: missing weight file(s) {', '.join(missing)}")
    return files


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path.name}: not a readable safetensors file ({exc})") from None


def _file_header(path: Path) -> dict[str, TensorInfo]:
    """One file's tensors. safetensors checks the file; its JSON header (after an 8-byte length) says where each
    tensor's bytes start, for comparing shared copies without loading them."""
    tensors: dict[str, TensorInfo] = {}
    with _open(path) as handle, path.open("rb") as raw:
        size = int.from_bytes(raw.read(8), "little")
        entries = json.loads(raw.read(size))
        for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            entry = entries[name]
            tensors[name] = TensorInfo(
                path, tuple(entry["shape"]), entry["dtype"], name, 8 + size + entry["data_offsets"][0]
            )
    return tensors


def shared_name(name: str) -> str:
    """The decoder name of a shared text weight stored under the encoder's prefix; any other name unchanged.
    The encoder's `layer_scalar`s are its own, and self-conditioning is the decoder's alone."""
    rest = name.removeprefix(ENCODER_TEXT)
    if rest == name or rest.endswith(".layer_scalar") or rest.startswith("self_conditioning."):
        return name
    return DECODER + rest


def read_header(files: list[Path]) -> dict[str, TensorInfo]:
    """Tensor name -> (file, shape, dtype), from the headers only.

    Shared weights are found by their decoder names whichever prefix stores them (`TensorInfo.name` keeps the
    stored one). Stored under both, the decoder copy is read and the encoder copy kept as its `copy`: shape and
    dtype are compared here, the bytes by `check_copies`.
    """
    stored: dict[str, TensorInfo] = {}
    for path in files:
        stored.update(_file_header(path))
    found: dict[str, TensorInfo] = {}
    for name in sorted(stored, key=lambda n: n.startswith(ENCODER_TEXT)):  # decoder names first: they are read
        info, key = stored[name], shared_name(name)
        first = found.get(key)
        if first is None:
            found[key] = info
        elif (first.shape, first.dtype) == (info.shape, info.dtype):
            found[key] = replace(first, copy=info)
        else:
            raise CheckpointError(
                f"{name} {list(info.shape)} {info.dtype} differs from {key} {list(first.shape)} {first.dtype}, "
                "the weight it shares"
            )
    return found


SAMPLE_BYTES = 4096  # compared at the start, middle and end of each copy: cheap next to reading the weights
CHUNK_BYTES = 1 << 24


def check_copies(found: dict[str, TensorInfo], full: bool = False) -> None:
    """A shared weight stored twice must be stored twice the same: sampled bytes, or every byte with `full`."""
    for info in found.values():
        if info.copy is not None and not _same_bytes(info, info.copy, full):
            raise CheckpointError(f"{info.copy.name}: bytes differ from {info.name}, the weight it shares")


def _same_bytes(a: TensorInfo, b: TensorInfo, full: bool) -> bool:
    size = a.nbytes
    if full or size <= 3 * SAMPLE_BYTES:
        spans = [(0, size)]
    else:
        spans = [(0, SAMPLE_BYTES), ((size - SAMPLE_BYTES) // 2, SAMPLE_BYTES), (size - SAMPLE_BYTES, SAMPLE_BYTES)]
    with a.path.open("rb") as file_a, b.path.open("rb") as file_b:
        for start, length in spans:
            for at in range(start, start + length, CHUNK_BYTES):
                n = min(CHUNK_BYTES, start + length - at)
                file_a.seek(a.offset + at)
                file_b.seek(b.offset + at)
                if file_a.read(n) != file_b.read(n):
                    return False
    return True


def validate(found: dict[str, TensorInfo], expected: dict[str, tuple[int, ...]]) -> None:
    """One error listing every missing, unexpected and mis-shaped tensor."""
    # Vision tensors are checked when the plan reads them, ignored when it leaves them (a text-only load).
    skipped = ("lm_head.",) if any(n.startswith(VISION_PREFIXES) for n in expected) else SKIPPED_PREFIXES
    text = {n: v for n, v in found.items() if not n.startswith(skipped) and not is_activation_scale(n)}
    missing = sorted(set(expected) - set(text))
    unexpected = sorted(text[n].name or n for n in set(text) - set(expected))  # as stored: maybe encoder names
    misshaped = [
        f"{n} {list(text[n].shape)} (expected {list(shape)})"
        for n, shape in expected.items()
        if n in text and text[n].shape != shape
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            problems.append(f"{len(names)} {label}: {shown}")
    if problems:
        raise CheckpointError("checkpoint does not match config.json: " + "; ".join(problems))


@dataclass
class LoadPlan:
    """What to read: plain tensors by name, and every linear/expert weight in the form the checkpoint stores."""

    plain: dict[str, tuple[int, ...]]  # checkpoint name -> shape (norms, embeddings, router, scalars)
    linears: dict[str, StoredLinear]  # module name -> how the weight is stored
    experts: dict[str, list[list[StoredLinear]]]  # module name -> per expert, the pieces stacked into its rows
    vision: dict[str, tuple[int, ...]] = field(default_factory=dict)  # checkpoint name -> shape, read as stored

    def stored(self) -> Iterator[StoredLinear]:
        """Every linear and expert piece, in whatever form the checkpoint holds it."""
        yield from self.linears.values()
        for pieces in self.experts.values():
            for expert in pieces:
                yield from expert

    @property
    def expected(self) -> dict[str, tuple[int, ...]]:
        names = dict(self.plain) | self.vision
        for stored in self.stored():
            names.update(stored.expected)
        return names


def plan_load(found: dict[str, TensorInfo], config: TextConfig, vision: VisionConfig | None = None) -> LoadPlan:
    """Match the checkpoint's tensors to the model: bf16 fused experts, or quantized (or bf16) experts apart; and
    the vision tower's tensors when `vision` is given."""
    plain = expected_shapes(config)
    linears: dict[str, StoredLinear] = {}
    experts: dict[str, list[list[StoredLinear]]] = {}
    Ie, H = config.moe_intermediate_size, config.hidden_size
    for name, shape in list(plain.items()):
        if name.endswith("_proj.weight"):
            linears[module_name(name)] = stored_linear(found, name.removesuffix(".weight"), *shape)
            del plain[name]
        elif ".experts." in name and name not in found:  # not fused: the per-expert tensors instead
            base = name.rsplit(".", 1)[0]
            projections = (
                [("gate_proj", Ie, H), ("up_proj", Ie, H)] if name.endswith("gate_up_proj") else [("down_proj", H, Ie)]
            )
            experts[module_name(name)] = [
                [stored_linear(found, f"{base}.{e}.{proj}", N, K) for proj, N, K in projections]
                for e in range(config.num_experts)
            ]
            del plain[name]
    return LoadPlan(plain, linears, experts, vision_shapes(vision) if vision is not None else {})


def _tensor_reader(
    found: dict[str, TensorInfo], device: torch.device, files: ExitStack
) -> Callable[[str], torch.Tensor]:
    """Memory-mapped reads of single tensors, placed straight on the target device (each file opened once,
    closed with `files`). On the CPU a tensor kept as stored stays a view of the file's pages."""
    handles: dict[Path, Any] = {}

    def read(name: str) -> torch.Tensor:
        info = found[name]
        if info.path not in handles:
            handles[info.path] = files.enter_context(_open(info.path))
        try:
            return handles[info.path].get_tensor(info.name or name).to(device)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{info.path.name}: cannot read {name} ({exc})") from None

    return read


Weight = torch.Tensor | QuantizedWeight
Transform = Callable[[str, torch.Tensor], Weight]
Build = Callable[[Callable[[str], torch.Tensor], Stacks], Weight]


@dataclass(frozen=True)
class _Unit:
    """One entry of the loaded state and the checkpoint tensors it is built from: `stacks` (role -> names) are
    read straight into one new buffer per role, the other tensors are mapped from the files."""

    module: str
    names: tuple[str, ...]
    build: Build
    transformable: bool  # a full-precision linear or expert weight, which quantize-at-load may take
    stacks: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _units(
    plan: LoadPlan, found: dict[str, TensorInfo], scheme: QuantScheme | None, dtype: torch.dtype, device: torch.device
) -> list[_Unit]:
    def as_dtype(name: str) -> Build:
        return lambda read, _: read(name).to(dtype)

    def linear(stored: StoredLinear) -> Build:
        return lambda read, _: build_linear(stored, read, scheme, dtype)

    def experts(pieces: list[list[StoredLinear]]) -> Build:
        lead = (len(pieces),)
        return lambda _, stacks: assemble(pieces[0], {r: t.to(device) for r, t in stacks.items()}, lead, scheme, dtype)

    # Fused bf16 experts are plain tensors too; norms, embeddings, scalars and vision are never transformed.
    units = [_Unit(module_name(n), (n,), as_dtype(n), ".experts." in n) for n in plan.plain]
    units += [_Unit(m, tuple(s.expected), linear(s), True) for m, s in plan.linears.items()]
    for module, pieces in plan.experts.items():
        stacks = _expert_stacks(module, pieces, found)
        names = tuple(name for role in stacks.values() for name in role)
        units.append(_Unit(module, names, experts(pieces), True, stacks))
    units += [_Unit(vision_module_name(n), (n,), as_dtype(n), False) for n in plan.vision]
    return units


def _expert_stacks(
    module: str, pieces: list[list[StoredLinear]], found: dict[str, TensorInfo]
) -> dict[str, tuple[str, ...]]:
    """Role -> the names of that role's tensors, expert by expert and piece by piece: in this order their bytes
    are the experts' stacked weights, once every piece is stored alike (form, scale layout, dtypes, widths)."""
    flat = [piece for expert in pieces for piece in expert]
    if len({(piece.form, piece.scale_layout) for piece in flat}) > 1:
        raise CheckpointError(f"{module}: experts stored in different precisions")
    stacks = {role: tuple(piece.names[role] for piece in flat) for role in flat[0].names}
    for role, names in stacks.items():
        if len({_layout(found[name]) for name in names}) > 1:
            raise CheckpointError(f"{module}: experts' {role} tensors stored in different dtypes or widths")
    return stacks


def _layout(info: TensorInfo) -> tuple[str, tuple[int, ...]]:
    """What stacking needs equal: dtype and the widths past the first dim (single values count as one row)."""
    return info.dtype, info.shape[1:] if len(info.shape) > 1 else ()


def _spans(found: dict[str, TensorInfo], names: tuple[str, ...]) -> list[tuple[Path, int, int]]:
    """(file, start, end) byte ranges holding `names`, in file order, neighbours merged."""
    spans: list[tuple[Path, int, int]] = []
    for path, start, end in sorted((found[n].path, found[n].offset, found[n].offset + found[n].nbytes) for n in names):
        if spans and spans[-1][0] == path and spans[-1][2] == start:
            spans[-1] = (path, spans[-1][1], end)
        else:
            spans.append((path, start, end))
    return spans


def load_state(
    found: dict[str, TensorInfo],
    plan: LoadPlan,
    device: torch.device,
    dtype: torch.dtype,
    scheme: QuantScheme | None,
    transform: Transform | None = None,
    verify: bool = False,
    report: LoadReporter | None = None,
) -> dict[str, Weight]:
    """Read a checkpoint (its headers' tensors, planned and validated by `checkpoint.inspect`) as
    `module name -> tensor or quantized weight`.

    Shared weights stored twice are compared by sampled bytes first, or every byte with `verify`.

    `transform(module_name, weight)` sees each full-precision linear or expert weight as it arrives (one at a
    time, on the device): quantize-at-load hooks in there, so the whole bf16 model is never resident. A vision
    tower in the plan is read at `dtype` and never transformed. `report` hears each phase's progress.
    """
    check_copies(found, full=verify)
    report = report or LoadReporter()

    # Weights are built in file order, so that the reads ahead of them go through each file start to end.
    rank = {path: i for i, path in enumerate(sorted({info.path for info in found.values()}))}
    units = _units(plan, found, scheme, dtype, device)
    spans = {unit.module: _spans(found, unit.names) for unit in units}
    units.sort(key=lambda unit: max((rank[path], end) for path, _, end in spans[unit.module]))
    sizes = {unit.module: sum(found[n].nbytes for n in unit.names) for unit in units}
    total = sum(sizes.values())
    phases: dict[Phase, int] = {"read": total}
    if transform is not None:
        phases["quantize"] = sum(sizes[u.module] for u in units if u.transformable)
    if device.type != "cpu":
        phases["to device"] = total
    report.start(total, sum(len(u.names) for u in units), phases)

    reads = []
    for unit in units:
        stacks = {role: [found[name] for name in names] for role, names in unit.stacks.items()}
        reads.append(UnitReads(spans[unit.module], stacks, len(unit.names)))
    with ExitStack() as files:
        read = _tensor_reader(found, device, files)
        ahead = ReadAhead(reads, report)
        files.callback(ahead.close)
        state: dict[str, Weight] = {}
        for i, unit in enumerate(units):
            weight = unit.build(read, ahead.wait_for(i))
            if "to device" in phases:
                report.advance("to device", sizes[unit.module], len(unit.names))
            if transform is not None and unit.transformable:
                # A checkpoint's own quantized weights stay as stored.
                weight = transform(unit.module, weight) if isinstance(weight, torch.Tensor) else weight
                report.advance("quantize", sizes[unit.module], len(unit.names))
            state[unit.module] = weight
    return state


def parameter_counts(config: TextConfig) -> tuple[int, int]:
    """(total, active per token) text parameters; only K of the E experts run for a token."""
    shapes = expected_shapes(config)
    total = sum(math.prod(s) for s in shapes.values())
    experts = sum(math.prod(s) for n, s in shapes.items() if ".experts." in n)
    inactive = experts * (config.num_experts - config.top_k_experts) // config.num_experts
    return total, total - inactive
