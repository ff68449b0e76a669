"""A single-token decode step with static shapes and no host reads: what torch.compile and CUDA graphs can capture.

`StepDecoder.forward` reads lengths back to the host to size its attention (the longest row's length, whether rows
differ, the longest condition), which syncs a GPU at every step, rules out CUDA graphs and breaks a compiled graph.
This step, for one token per row of a fixed row range:
- attends over a window of the self-attention cache, masked on the device by each row's length, and over the
  whole cross-attention cache, masked by the device-side condition lengths;
- writes the new keys/values at each row's device-side position (index_put_) and advances the device lengths;
so its shapes depend only on the row count, the window and the cross-cache capacity, and nothing is read back.
The window is the whole cache (max_steps keys) or, with a `min_window`, the smallest of min_window * 2^i (or
max_steps) that holds the rows' longest context, chosen from the decoder's host copies of the
lengths: at most ~5 graphs per row count, and a short context no longer pays for attending over the whole cache
(benchmarks/step_bench.py measures both). The eager forward stays for prefills and as the yardstick.
"""

import logging
import typing as tp
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.decoder import StepDecoder

logger = logging.getLogger(__name__)

STEP_MODES = ("auto", "off", "static", "compile")
MIN_WINDOW = 128


def step_function(decoder: StepDecoder, keys: list[torch.Tensor], values: list[torch.Tensor],
                  cross_keys: torch.Tensor, cross_values: torch.Tensor, cross_lengths: torch.Tensor,
                  lengths: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """One token per row: tokens [R, K] -> logits [R, K, card] (float32); advances `lengths` [R] in place.

    `keys`/`values` (one [R, H, window, Dh] per layer), `cross_*` and `lengths` are views of the decoder's
    caches for the row range: views, so one compiled graph serves every range of the same size, and one per layer,
    so that each graph input is written once and the compiled graph writes it in place (a single [L, ...] input
    written by every layer measured ~10x slower compiled: 160 vs 15 ms a step on a 512 x 8 model, 2 rows). Pure
    tensor code: no host reads.
    """
    n_rows, n_codebooks = tokens.shape
    positions = lengths.clone()
    x = decoder.transformer.embed(tokens.unsqueeze(-1), positions.view(-1, 1))
    window = torch.arange(keys[0].shape[2], device=tokens.device).view(1, 1, 1, -1)
    self_mask = _additive(window <= positions.view(-1, 1, 1, 1), decoder.dtype)
    cross_window = torch.arange(cross_keys.shape[3], device=tokens.device).view(1, 1, 1, -1)
    cross_mask = _additive(cross_window < cross_lengths.view(-1, 1, 1, 1), decoder.dtype)
    row_index = torch.arange(n_rows, device=tokens.device)
    for index in range(len(decoder.transformer.layers)):
        def self_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: int = index) -> torch.Tensor:
            keys[index][row_index, :, positions] = k[:, :, 0]
            values[index][row_index, :, positions] = v[:, :, 0]
            return F.scaled_dot_product_attention(q, keys[index], values[index], attn_mask=self_mask)

        def cross_attend(q: torch.Tensor, index: int = index) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, cross_keys[index], cross_values[index], attn_mask=cross_mask)

        x = decoder.transformer.layer(index, x, self_attend, cross_attend)
    lengths.add_(1)
    return decoder.transformer.head(x).view(n_rows, n_codebooks, decoder.card).float()


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as 0 / -inf in the activation dtype: CPU attention measured ~25% faster with it."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


@dataclass
class _Captured:
    graph: tp.Any  # torch.cuda.CUDAGraph
    tokens: torch.Tensor
    logits: torch.Tensor
    cross_storage: int  # the cross cache the graph reads; it is recaptured when that cache grows


class CapturableStep:
    """Runs `step_function` on a decoder's rows: eagerly, through torch.compile(fullgraph=True), and on CUDA
    replayed from a CUDA graph captured once per row range and window (and per cross-cache allocation)."""

    def __init__(self, decoder: StepDecoder, compiled: bool, graphs: tp.Optional[bool] = None,
                 min_window: tp.Optional[int] = MIN_WINDOW) -> None:
        self.decoder = decoder
        self.compiled = compiled
        self.windows = _windows(min_window, decoder.max_steps) if min_window else [decoder.max_steps]
        self.graphs = decoder.device.type == "cuda" if graphs is None else graphs
        if self.graphs and not torch.cuda.is_available():
            raise ValueError("CUDA graphs need CUDA")
        self._fn = torch.compile(step_function, fullgraph=True, dynamic=False) if compiled else step_function
        self._captured: dict[tuple[int, int, int], _Captured] = {}

    def __call__(self, rows: slice, tokens: torch.Tensor) -> torch.Tensor:
        """Appends tokens [R, K] to `rows` and returns logits [R, K, card]; checks capacity on host mirrors."""
        self.decoder.check_step(rows)
        needed = max(self.decoder.host_lengths[rows]) + 1
        window = next(w for w in self.windows if w >= needed)
        if self.graphs:
            logits = self._replay(rows, window, tokens)
        else:
            logits = self._fn(*self._views(rows, window), tokens)
        self.decoder.advance_host(rows, 1)
        return logits

    def _views(self, rows: slice, window: int) -> tuple:
        d = self.decoder
        return (d, list(d.keys[:, rows, :, :window]), list(d.values[:, rows, :, :window]), d.cross_keys[:, rows],
                d.cross_values[:, rows], d.cross_lengths[rows], d.lengths[rows])

    def _replay(self, rows: slice, window: int, tokens: torch.Tensor) -> torch.Tensor:
        key = (rows.start, rows.stop, window)
        captured = self._captured.get(key)
        if captured is None or captured.cross_storage != self.decoder.cross_keys.data_ptr():
            captured = self._captured[key] = self._capture(rows, window, tokens)
        captured.tokens.copy_(tokens)
        captured.graph.replay()
        return captured.logits.clone()  # the graph's output buffer is overwritten by its next replay

    def _capture(self, rows: slice, window: int, tokens: torch.Tensor) -> _Captured:
        """Warms up on a side stream (compiling if asked), undoes the warm-up's length advance, captures."""
        views, static_tokens = self._views(rows, window), tokens.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._fn(*views, static_tokens)  # writes this step's keys/values, which the replay writes again
            views[-1].sub_(1)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self._fn(*views, static_tokens)
        logger.info("captured a CUDA graph of the decode step for rows %d..%d, window %d", rows.start,
                    rows.stop - 1, window)
        return _Captured(graph, static_tokens, logits, self.decoder.cross_keys.data_ptr())


def _windows(smallest: int, max_steps: int) -> list[int]:
    """smallest * 2^i below max_steps, then max_steps itself."""
    windows, size = [], smallest
    while size < max_steps:
        windows.append(size)
        size *= 2
    return windows + [max_steps]


def choose_step_mode(requested: str, device: str) -> tuple[str, str]:
    """(mode, reason) for `requested` ("auto" or a mode of STEP_MODES) on `device`.

    The auto rule follows benchmarks/step_bench.py: on CUDA the capturable step replayed from a CUDA graph (one
    launch per step instead of hundreds, and no host syncs); on a CPU the eager forward: there a step is bound by
    its weight matmuls, the capturable step measured 0.95-1.04x the eager forward and the compiled one 0.94-1.09x
    (musicgen-small dims, fp32/bf16, 1-4 streams), for ~22-25 s of compiling per row count and window, which
    would stall live sessions whenever a new one is met.
    """
    if requested not in STEP_MODES:
        raise ValueError(f"MUSICGEN_COMPILE_STEP must be one of {', '.join(STEP_MODES)}, got {requested!r}")
    if requested != "auto":
        return requested, "set by MUSICGEN_COMPILE_STEP"
    if device.startswith("cuda"):
        return "static", "CUDA: the capturable step, replayed from a CUDA graph per row range"
    return "off", "CPU: the eager forward (the compiled step measured within 10% of it, for ~25 s compiles)"
