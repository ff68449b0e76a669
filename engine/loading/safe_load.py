"""torch.load for checkpoints that may come from anywhere: tensors and plain config only, never pickled code.

Every file the engine reads (LM, codec, MultiBand Diffusion, the stem separator) goes through `safe_load`; its
refusal names the code the file references.
"""

import typing as tp
from collections import defaultdict
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says what to change."""


def _safe_globals() -> list:
    """What a training config pickled as an OmegaConf object needs; nothing callable beyond these containers."""
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.dictconfig import DictConfig
    from omegaconf.listconfig import ListConfig
    from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

    return [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, BooleanNode, FloatNode, IntegerNode,
            StringNode, tp.Any, dict, list, int, float, str, bool, defaultdict]


def safe_load(path: Path, extra_globals: tp.Sequence = ()) -> dict:
    """torch.load with weights_only=True and the allow-list above (plus `extra_globals`, classes a caller rebuilds
    itself, e.g. the demucs model class a separator package names); anything else is refused."""
    try:
        with torch.serialization.safe_globals(_safe_globals() + list(extra_globals)):
            pkg = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError with a long hint; keep the essential part
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        unsafe = _unsafe_globals(path, extra_globals)
        detail = f" It references code that is not allowed: {', '.join(unsafe)}." if unsafe else ""
        raise CheckpointError(
            f"Refusing to load {path}: it is not a plain tensor/config checkpoint.{detail} ({first_line})"
        ) from None
    if not isinstance(pkg, dict):
        raise CheckpointError(f"{path} holds a {type(pkg).__name__}, expected a dict of weights and config")
    return pkg


def _unsafe_globals(path: Path, extra_globals: tp.Sequence = ()) -> list[str]:
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _safe_globals() + list(extra_globals)
               if hasattr(g, "__qualname__")}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []
    return [name for name in found if name not in allowed and name != "typing.Any"]
