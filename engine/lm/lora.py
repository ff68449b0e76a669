"""LoRA adapters on the engine's transformer: the adapter file, the base fingerprint, merging, and the low-rank update
each targeted projection adds (engine.lm.transformer calls `delta`, the one place the update is computed).

A projection W (a `_Layer` field named in TARGETS) becomes W + scale * B @ A, A [r, in], B [out, r], scale =
alpha / r (peft's convention). Two sources of the update share one interface, `delta(layer, target, h, adapters)`:
- `SingleAdapter`: one adapter on every row, its tensors used as they are (requires_grad for training);
- `AdapterBank`: serving many adapters at once (S-LoRA/Punica's per-row adapters). Every (layer, target) holds the
  adapters' A stacked [N, r, in] and B [out, N, r] (slot 0 is the base model: all zeros, so it is not stored),
  preallocated at `slots` x `max_rank`, so loading an adapter writes a slot in place and a captured CUDA graph still
  reads it. A row picks its slot by an index tensor [R] (an input of the step, like its tokens): the update is two
  dense matmuls over all slots, h @ A^T -> [R, S, N*r], masked to each row's own slot times its scale, then @ B^T.
  Static shapes, no host read, and each adapter's weights read once per step whatever the number of rows using it.

The file is safetensors: `layers.{i}.{target}.lora_A` [r, in] and `lora_B` [out, r] for every layer and target, with
metadata `format`, `rank`, `alpha`, `targets` (comma separated), `base_fingerprint` and `training` (JSON).
"""

import hashlib
import json
import logging
import math
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.lm.precision import Linear

logger = logging.getLogger(__name__)

FORMAT = "musicgen-lora-v1"
TARGETS = ("qkv", "out", "cross_q", "cross_out", "ff1", "ff2")
# Every projection a decode step runs, as musicgen-dreamboothing's peft config targets the decoder's attention
# (q/k/v/out, self and cross) and feed-forward (fc1/fc2) at r = alpha = 16. Not the cross-attention key/value
# projection: it runs once per condition change, outside the step (engine.lm.decoder.set_condition).
DEFAULT_TARGETS = TARGETS
DEFAULT_RANK = 16
DEFAULT_ALPHA = 16.0
SUFFIX = ".safetensors"


class AdapterError(ValueError):
    """An adapter file that cannot be read or does not fit the loaded model; the message says why."""


@dataclass
class Adapter:
    """One LoRA adapter: `weights` maps `layers.{i}.{target}.lora_A`/`lora_B` to tensors."""

    rank: int
    alpha: float
    targets: tuple[str, ...]
    weights: dict[str, torch.Tensor]
    base_fingerprint: str
    training: dict = field(default_factory=dict)
    name: str = ""

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def pair(self, index: int, target: str) -> tp.Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(A [r, in], B [out, r]) of layer `index`'s `target`, or None where the adapter leaves it alone."""
        a = self.weights.get(f"layers.{index}.{target}.lora_A")
        return None if a is None else (a, self.weights[f"layers.{index}.{target}.lora_B"])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.weights.values())


def _lm_weight(lm, index: int, target: str) -> torch.Tensor:
    """The audiocraft parameter (or the slice of it) that `_Layer.<target>` of layer `index` is built from."""
    layer = lm.transformer.layers[index]
    dim = lm.dim
    if target == "qkv":
        return layer.self_attn.in_proj_weight
    if target == "out":
        return layer.self_attn.out_proj.weight
    if target in ("cross_q", "cross_out") and layer.cross_attention is None:
        raise AdapterError(f"target {target} needs cross-attention, which this model's layers lack")
    if target == "cross_q":
        return layer.cross_attention.in_proj_weight[:dim]
    if target == "cross_out":
        return layer.cross_attention.out_proj.weight
    if target == "ff1":
        return layer.linear1.weight
    if target == "ff2":
        return layer.linear2.weight
    raise AdapterError(f"unknown LoRA target {target!r} (known: {', '.join(TARGETS)})")


def base_fingerprint(lm) -> str:
    """A stable fingerprint of an LM's weights, cheap on any size: every parameter's name and shape, and 64 values
    strided across it, rounded to float16 (so the same checkpoint loaded in float32 or float16 gives the same one)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(lm.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        if flat.numel() and flat.is_floating_point():
            step = max(1, flat.numel() // 64)
            digest.update(flat[::step][:64].to("cpu", torch.float16).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:32]


def new_adapter(lm, rank: int = DEFAULT_RANK, alpha: float = DEFAULT_ALPHA,
                targets: tp.Sequence[str] = DEFAULT_TARGETS, *, b_std: float = 0.0,
                generator: tp.Optional[torch.Generator] = None, requires_grad: bool = False,
                training: tp.Optional[dict] = None) -> Adapter:
    """A new adapter for `lm`, in float32 on the LM's device: A as peft initialises it (Kaiming uniform), B zeros
    (so it starts as the base model) or, with `b_std`, normal noise (a random adapter for tests)."""
    if rank < 1:
        raise AdapterError(f"LoRA rank must be >= 1, got {rank}")
    device = next(lm.parameters()).device
    weights: dict[str, torch.Tensor] = {}
    for index in range(len(lm.transformer.layers)):
        for target in targets:
            out_features, in_features = _lm_weight(lm, index, target).shape
            bound = 1 / math.sqrt(in_features)  # kaiming_uniform_(a=sqrt(5)) on [r, in], as peft does
            a = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
            b = torch.randn(out_features, rank, generator=generator) * b_std if b_std else torch.zeros(
                out_features, rank)
            for key, tensor in (("lora_A", a), ("lora_B", b)):
                weights[f"layers.{index}.{target}.{key}"] = tensor.to(device).requires_grad_(requires_grad)
    return Adapter(rank, float(alpha), tuple(targets), weights, base_fingerprint(lm), dict(training or {}))


def save_adapter(adapter: Adapter, path: tp.Union[str, Path]) -> Path:
    """Writes `adapter` as safetensors (float32 tensors, metadata as documented above); returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {key: t.detach().to("cpu", torch.float32).contiguous() for key, t in adapter.weights.items()}
    metadata = {"format": FORMAT, "rank": str(adapter.rank), "alpha": repr(float(adapter.alpha)),
                "targets": ",".join(adapter.targets), "base_fingerprint": adapter.base_fingerprint,
                "training": json.dumps(adapter.training, sort_keys=True, default=str)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_adapter(path: tp.Union[str, Path], device: tp.Union[str, torch.device] = "cpu") -> Adapter:
    """Reads an adapter file; AdapterError names the file and what is wrong with it."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            weights = {key: f.get_tensor(key) for key in f.keys()}
    except FileNotFoundError:
        raise AdapterError(f"adapter {path}: no such file") from None
    except Exception as error:  # safetensors raises its own error types for a damaged header or body
        raise AdapterError(f"adapter {path}: not a safetensors file ({error})") from None
    if metadata.get("format") != FORMAT:
        raise AdapterError(f"adapter {path}: metadata format is {metadata.get('format')!r}, expected {FORMAT!r}")
    try:
        rank, alpha = int(metadata["rank"]), float(metadata["alpha"])
        targets = tuple(t for t in metadata["targets"].split(",") if t)
        fingerprint = metadata["base_fingerprint"]
        training = json.loads(metadata.get("training") or "{}")
    except (KeyError, ValueError) as error:
        raise AdapterError(f"adapter {path}: metadata missing or unreadable ({error})") from None
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or rank < 1:
        raise AdapterError(f"adapter {path}: " + (f"unknown targets {unknown}" if unknown else f"rank {rank}"))
    for key, tensor in weights.items():
        want = 0 if key.endswith("lora_A") else 1
        if tensor.dim() != 2 or tensor.shape[want] != rank:
            raise AdapterError(f"adapter {path}: {key} has shape {tuple(tensor.shape)}, not rank {rank}")
    return Adapter(rank, alpha, targets, weights, fingerprint, training, name=path.name.removesuffix(SUFFIX))


def check_fits(adapter: Adapter, lm, fingerprint: tp.Optional[str] = None) -> None:
    """Raises AdapterError unless `adapter` was made for `lm` (same base fingerprint) and matches its shapes."""
    fingerprint = fingerprint or base_fingerprint(lm)
    label = adapter.name or "adapter"
    if adapter.base_fingerprint != fingerprint:
        raise AdapterError(f"{label} was trained on base weights {adapter.base_fingerprint}, the loaded model is "
                           f"{fingerprint}: it cannot be applied to this checkpoint")
    for index in range(len(lm.transformer.layers)):
        for target in adapter.targets:
            pair = adapter.pair(index, target)
            if pair is None:
                raise AdapterError(f"{label} lacks layers.{index}.{target} (the model has "
                                   f"{len(lm.transformer.layers)} layers)")
            out_features, in_features = _lm_weight(lm, index, target).shape
            if pair[0].shape[1] != in_features or pair[1].shape[0] != out_features:
                raise AdapterError(f"{label}: layers.{index}.{target} is {out_features}x{in_features} in the model, "
                                   f"the adapter's is {pair[1].shape[0]}x{pair[0].shape[1]}")


@torch.no_grad()
def merge(adapter: Adapter, lm) -> None:
    """Folds `adapter` into `lm`'s weights in place (W += scale * B @ A), after checking it fits: the result is a
    plain checkpoint that serves, saves and exports as any other."""
    check_fits(adapter, lm)
    for index in range(len(lm.transformer.layers)):
        for target in adapter.targets:
            a, b = adapter.pair(index, target)
            weight = _lm_weight(lm, index, target)
            update = adapter.scale * (b.detach().float() @ a.detach().float())
            weight.add_(update.to(weight.device, weight.dtype))


class SingleAdapter:
    """One adapter applied to every row, its tensors used as they are: training's forward (gradients flow into
    A and B) and a one-adapter model. The adapter index is ignored."""

    def __init__(self, adapter: Adapter, dtype: tp.Optional[torch.dtype] = None) -> None:
        self.adapter = adapter
        self.dtype = dtype

    def delta(self, index: int, target: str, h: torch.Tensor,
              adapters: tp.Optional[torch.Tensor]) -> tp.Optional[torch.Tensor]:
        pair = self.adapter.pair(index, target)
        if pair is None:
            return None
        a, b = pair
        dtype = self.dtype or h.dtype
        return self.adapter.scale * F.linear(F.linear(h, a.to(dtype)), b.to(dtype))


class AdapterBank:
    """Up to `slots` adapters of rank <= `max_rank` resident at once, each row of a forward using its own (or none:
    slot 0), in one batched update per projection (see the module docstring)."""

    def __init__(self, lm, slots: int, max_rank: int, dtype: torch.dtype,
                 targets: tp.Sequence[str] = DEFAULT_TARGETS) -> None:
        if slots < 1 or max_rank < 1:
            raise ValueError("an adapter bank needs slots >= 1 and max_rank >= 1")
        self.slots, self.max_rank, self.targets, self.dtype = slots, max_rank, tuple(targets), dtype
        self.device = next(lm.parameters()).device
        self.fingerprint = base_fingerprint(lm)
        self.num_layers = len(lm.transformer.layers)
        width = slots * max_rank  # slots 1..N; slot 0 (no adapter) is all zeros and not stored
        self._a: dict[tuple[int, str], torch.Tensor] = {}  # [N * r, in]
        self._b: dict[tuple[int, str], torch.Tensor] = {}  # [out, N * r]
        for index in range(self.num_layers):
            for target in self.targets:
                out_features, in_features = _lm_weight(lm, index, target).shape
                self._a[(index, target)] = torch.zeros(width, in_features, dtype=dtype, device=self.device)
                self._b[(index, target)] = torch.zeros(out_features, width, dtype=dtype, device=self.device)
        self.scales = torch.zeros(slots + 1, dtype=dtype, device=self.device)  # slot 0 stays 0
        # the matmuls' weights as the decoder holds its own (engine.lm.precision.Linear): on a CPU in bfloat16
        # prepacked for oneDNN (a plain bf16 F.linear repacks at every call), so rebuilt after each load; elsewhere
        # the same tensors, written in place (a captured CUDA graph reads them)
        self._format = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
        self._linears: dict[tuple[int, str], tuple[Linear, Linear]] = {}
        self._pack()
        self._lm = lm
        self.names: list[tp.Optional[str]] = [None] * (slots + 1)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self._a.values(), *self._b.values()))

    def load(self, slot: int, adapter: Adapter) -> None:
        """Writes `adapter` into `slot` (1..slots), in place; raises AdapterError when it does not fit."""
        if not 1 <= slot <= self.slots:
            raise ValueError(f"slot {slot} outside 1..{self.slots}")
        if adapter.rank > self.max_rank:
            raise AdapterError(f"{adapter.name or 'adapter'} has rank {adapter.rank}; this server holds adapters of "
                               f"rank <= {self.max_rank} (MUSICGEN_ADAPTER_MAX_RANK)")
        extra = sorted(set(adapter.targets) - set(self.targets))
        if extra:
            raise AdapterError(f"{adapter.name or 'adapter'} targets {extra}, which this server does not serve")
        check_fits(adapter, self._lm, self.fingerprint)
        start = (slot - 1) * self.max_rank
        columns = slice(start, start + adapter.rank)
        self.clear(slot)
        for (index, target), a_all in self._a.items():
            pair = adapter.pair(index, target)
            if pair is not None:
                a_all[columns] = pair[0].detach().to(self.device, self.dtype)
                self._b[(index, target)][:, columns] = pair[1].detach().to(self.device, self.dtype)
        self.scales[slot] = adapter.scale
        self.names[slot] = adapter.name
        self._pack()

    def _pack(self) -> None:
        self._linears = {key: (Linear(a_all, self._format), Linear(self._b[key], self._format))
                         for key, a_all in self._a.items()}

    def clear(self, slot: int) -> None:
        """Empties `slot` (its rows then run the base model)."""
        columns = slice((slot - 1) * self.max_rank, slot * self.max_rank)
        for key, a_all in self._a.items():
            a_all[columns].zero_()
            self._b[key][:, columns].zero_()
        self.scales[slot] = 0
        self.names[slot] = None
        self._pack()

    def delta(self, index: int, target: str, h: torch.Tensor,
              adapters: tp.Optional[torch.Tensor]) -> tp.Optional[torch.Tensor]:
        """The update of rows h [R, S, in] whose slots are `adapters` [R] (None: no row has one)."""
        linears = self._linears.get((index, target))
        if adapters is None or linears is None:
            return None
        rank, n_rows = self.max_rank, h.shape[0]
        mask = F.one_hot(adapters, self.slots + 1)[:, 1:].to(h.dtype) * self.scales[1:]  # [R, N]: own slot's scale
        low = linears[0](h)  # [R, S, N * r]
        low = (low.view(n_rows, -1, self.slots, rank) * mask.view(n_rows, 1, self.slots, 1)).view(*low.shape)
        return linears[1](low)
