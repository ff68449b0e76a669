"""The names audiocraft uses from xformers.ops: `unbind` as xformers defines it for the forward (exactly
torch.unbind; xformers only saves a torch.cat in its backward, and nothing here trains), the rest failing loudly
(audiocraft's attention backend is "torch": SDPA)."""

import torch


def _unavailable(what: str) -> RuntimeError:
    return RuntimeError(f"xformers.ops.{what} was called, but this is the GPU check's stand-in for xformers "
                        "(benchmarks/gpu/stubs): set audiocraft's attention backend to 'torch'")


def memory_efficient_attention(*args, **kwargs):
    raise _unavailable("memory_efficient_attention")


def unbind(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, ...]:
    return torch.unbind(x, dim)


class LowerTriangularMask:
    def __init__(self, *args, **kwargs) -> None:
        raise _unavailable("LowerTriangularMask")
