"""Which weight format the decoder uses on this device, and why.

A decode step reads every weight once, so the format decides the speed: on a GPU half precision (audiocraft runs
the LM in fp16 there too); on a CPU bfloat16 only where the CPU computes it natively (AVX512-BF16 or AMX), since
elsewhere bf16 matmuls are emulated and no faster than float32. MUSICGEN_WEIGHT_FORMAT overrides the choice.
"""

import typing as tp
from pathlib import Path

import torch

AUTO = "auto"
WEIGHT_FORMATS = ("float32", "bfloat16", "float16", "int8")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_weight_format(requested: str, device: str, flags: tp.Optional[set[str]] = None) -> tuple[str, str]:
    """(format, reason) for `requested` ("auto" or a format) on `device`."""
    if requested != AUTO:
        if requested not in WEIGHT_FORMATS:
            raise ValueError(f"MUSICGEN_WEIGHT_FORMAT must be auto or one of {', '.join(WEIGHT_FORMATS)}, "
                             f"got {requested!r}")
        return requested, "set by MUSICGEN_WEIGHT_FORMAT"
    if device.startswith("cuda"):
        return "float16", "CUDA: half-precision weights and KV cache (as audiocraft runs the LM on a GPU)"
    native = sorted(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags))
    if native:
        return "bfloat16", f"CPU with native bfloat16 ({', '.join(native)})"
    return "float32", "CPU without native bfloat16 (no avx512_bf16 or amx_bf16): bfloat16 would be emulated"


def onednn_prepacks_bf16() -> bool:
    """Whether oneDNN can hold bf16 weights prepacked for its matmul on this CPU. Not a second bf16 detector: the
    format is chosen above (native bf16 or not); this is how bf16 weights, once chosen or forced, are stored
    (oneDNN prepacks them on any AVX512 CPU, emulating where bf16 is not native)."""
    return hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def activation_dtype(weight_format: str) -> torch.dtype:
    """The dtype of activations and the KV cache for a weight format (int8 weights run with bf16 activations)."""
    return {"float32": torch.float32, "float16": torch.float16}.get(weight_format, torch.bfloat16)
