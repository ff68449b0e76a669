"""How many live sessions a GPU holds: JAM_MAX_SESSIONS=auto, sized from the memory free once the model is loaded.

The decoder preallocates every row it has (a session's at its most styles, MAX_STYLES + 1, and each prediction
slot's two) for the whole window, and with CUDA graphs the cross-attention cache for the longest prompt too, so a
row's bytes are known before it is allocated: layers x 2 (keys, values) x width x (window steps + condition
steps) x the activation dtype's size. What is left for rows is the free memory less WORK_SPACE_BYTES, the memory
the rest of a running engine takes beside its KV cache: the graphs' pool, activations of the largest prefill
slice, T5, the codec and MultiBand Diffusion at work (docs/performance.md, "On a GPU"). A bound measured from
the model's shapes, not paging: a session that blends one style still holds the rows of four.
"""

import torch

from engine.lm.precision import activation_dtype

WORK_SPACE_BYTES = 5 * 2**30
# the most sessions auto gives: past ~200 one-style sessions of musicgen-small an H100-class GPU's bandwidth binds
# before its memory (docs/performance.md, "On a GPU"), and a demo-sized model would otherwise take millions of rows
MAX_AUTO_SESSIONS = 256


def row_bytes(lm, max_steps: int, condition_steps: int, weight_format: str) -> int:
    """The KV-cache bytes of one decoder row: self-attention over `max_steps`, cross-attention over
    `condition_steps`."""
    element = torch.empty((), dtype=activation_dtype(weight_format)).element_size()
    return len(lm.transformer.layers) * 2 * lm.dim * (max_steps + condition_steps) * element


def sessions_that_fit(free_bytes: int, bytes_per_row: int, rows_per_session: int, prediction_rows: int) -> int:
    """Sessions whose rows, beside the predictions' rows and the work space, fit in `free_bytes` (0 to
    MAX_AUTO_SESSIONS)."""
    for_sessions = free_bytes - WORK_SPACE_BYTES - prediction_rows * bytes_per_row
    return min(MAX_AUTO_SESSIONS, max(0, for_sessions // (bytes_per_row * rows_per_session)))


def free_device_bytes(device: str) -> int:
    """Memory free on a CUDA device now (the driver's count: what other processes hold is not free)."""
    if not device.startswith("cuda"):
        raise ValueError("JAM_MAX_SESSIONS=auto sizes the sessions from a GPU's memory; on a CPU set a number")
    return torch.cuda.mem_get_info(torch.device(device))[0]
