"""Which weight format the decoder uses on this device and why, and how a weight is held in each (`Linear`).

A decode step reads every weight once, so the format decides the speed: on a GPU half precision (audiocraft runs
the LM in fp16 there too); on a CPU bfloat16 only where the CPU computes it natively (AVX512-BF16 or AMX), since
elsewhere bf16 matmuls are emulated and no faster than float32. MUSICGEN_WEIGHT_FORMAT overrides the choice.
"""

import typing as tp
from pathlib import Path

import torch
import torch.nn.functional as F

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


class Linear:
    """A bias-free projection in one of the weight formats.

    int8 stores each output channel as int8 with one bf16 scale and multiplies with bf16 activations
    (torch._weight_int8pack_mm): a decode step is bound by reading weights, and int8 reads a quarter of fp32's
    bytes. The accuracy cost is measured by the benchmarks (logit error, token agreement). bfloat16 on a CPU is
    stored prepacked in oneDNN's layout: a plain bf16 F.linear repacks its weight at every call, which made small
    decode matmuls 1.5-2x slower than the prepacked kernel (same results to the bit; benchmarks/engine_bench).
    """

    def __init__(self, weight: torch.Tensor, weight_format: str) -> None:
        weight = weight.detach()
        self.out_features, self.in_features = weight.shape
        self.format = weight_format
        self.packed = False
        if weight_format == "int8":
            scales = weight.float().abs().amax(dim=1).clamp(min=1e-8) / 127.0
            self.weight = (weight.float() / scales[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
            self.scales = scales.to(torch.bfloat16)
        else:
            self.weight = weight.to(getattr(torch, weight_format))
            self.scales = None
            if weight_format == "bfloat16" and self.weight.device.type == "cpu" and onednn_prepacks_bf16():
                self.weight = torch.ops.mkldnn._reorder_linear_weight(self.weight.contiguous(), 2)
                self.packed = True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")
        if self.scales is None:
            return F.linear(x, self.weight)
        flat = x.reshape(-1, self.in_features)
        return torch._weight_int8pack_mm(flat, self.weight, self.scales).view(*x.shape[:-1], self.out_features)

    @property
    def nbytes(self) -> int:
        extra = self.scales.numel() * self.scales.element_size() if self.scales is not None else 0
        return self.weight.numel() * self.weight.element_size() + extra
