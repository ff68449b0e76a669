"""A single-token decode step with static shapes and no host reads: what torch.compile and CUDA graphs can capture.

`StepDecoder.forward` sizes its attention from host copies of the lengths, so its shapes change with every row range
and length. This step takes one token for each of the first B rows of the cache (B a row bucket: 8, 16, 32, ... up
to the decoder's rows, a multiple of 8), with an `active` mask saying which of them really step:
- it attends over a window of the self-attention cache, masked on the device by each row's length, and over the
  whole cross-attention cache, masked by the device-side condition lengths;
- it writes each active row's new keys/values at its device-side position, writes an inactive row's own values
  back unchanged, and advances the active rows' device lengths;
so its shapes depend only on the bucket, the window and the cross-cache capacity, and nothing is read back. Rows
that are free, prefilling or not due a step this time are computed and thrown away: on a GPU a step is bound by
reading the weights, and a bucket at most doubles the rows computed.
The window is the whole cache (max_steps keys) or, with a `min_window`, the smallest of min_window * 2^i (or
max_steps) that holds the active rows' longest context, chosen from the decoder's host copies of the lengths.
On CUDA every (bucket, window) graph is captured once, when the engine starts (`capture_all`), into one memory
pool; a graph is captured again only when the cross cache it reads was reallocated (the decoder's cache_version),
which cannot happen after `capture_all` reserved that cache whole. The eager forward stays for prefills and as the
yardstick (benchmarks/step_bench.py measures both).
"""

import logging
import time
import typing as tp
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.lm.decoder import StepDecoder, row_ids

logger = logging.getLogger(__name__)

STEP_MODES = ("auto", "off", "static", "compile")
MIN_WINDOW = 128
ROW_BUCKET = 8  # the smallest bucket, and what the decoder's rows are rounded up to (see padded_rows)


def step_function(decoder: StepDecoder, keys: list[torch.Tensor], values: list[torch.Tensor],
                  cross_keys: torch.Tensor, cross_values: torch.Tensor, cross_lengths: torch.Tensor,
                  lengths: torch.Tensor, tokens: torch.Tensor,
                  active: tp.Optional[torch.Tensor] = None,
                  adapters: tp.Optional[torch.Tensor] = None) -> torch.Tensor:
    """One token per row: tokens [R, K] -> logits [R, K, card] (float32); advances `lengths` [R] in place. With
    `active` [R] (bool), only the rows it marks step: the others' caches and lengths are left as they were.
    `adapters` [R] is each row's LoRA slot (a view of the decoder's adapter_rows; None without a bank).

    `keys`/`values` (one [R, H, window, Dh] per layer), `cross_*` and `lengths` are views of the decoder's
    caches for the row range: views, so one compiled graph serves every range of the same size, and one per layer,
    so that each graph input is written once and the compiled graph writes it in place (a single [L, ...] input
    written by every layer measured ~10x slower compiled: 160 vs 15 ms a step on a 512 x 8 model, 2 rows). Pure
    tensor code: no host reads.
    """
    n_rows, n_codebooks = tokens.shape
    if active is None:
        positions = lengths.clone()
    else:  # an inactive row may be longer than the window: it reads and rewrites a position inside it
        positions = torch.where(active, lengths, lengths.clamp(max=keys[0].shape[2] - 1))
    x = decoder.transformer.embed(tokens.unsqueeze(-1), positions.view(-1, 1))
    window = torch.arange(keys[0].shape[2], device=tokens.device).view(1, 1, 1, -1)
    self_mask = _additive(window <= positions.view(-1, 1, 1, 1), decoder.dtype)
    cross_window = torch.arange(cross_keys.shape[3], device=tokens.device).view(1, 1, 1, -1)
    cross_mask = _additive(cross_window < cross_lengths.view(-1, 1, 1, 1), decoder.dtype)
    row_index = torch.arange(n_rows, device=tokens.device)
    for index in range(len(decoder.transformer.layers)):
        def self_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: int = index) -> torch.Tensor:
            for cache, new in ((keys[index], k[:, :, 0]), (values[index], v[:, :, 0])):
                if active is not None:
                    new = torch.where(active.view(-1, 1, 1), new, cache[row_index, :, positions])
                cache[row_index, :, positions] = new
            return F.scaled_dot_product_attention(q, keys[index], values[index], attn_mask=self_mask)

        def cross_attend(q: torch.Tensor, index: int = index) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, cross_keys[index], cross_values[index], attn_mask=cross_mask)

        x = decoder.transformer.layer(index, x, self_attend, cross_attend, adapters)
    lengths.add_(1 if active is None else active.long())
    return decoder.transformer.head(x).view(n_rows, n_codebooks, decoder.card).float()


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as 0 / -inf in the activation dtype: CPU attention measured ~25% faster with it."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def padded_rows(rows: int) -> int:
    """The decoder's rows for the capturable step: `rows` rounded up to a whole bucket step (the rows beyond are
    never a stream's; they make every bucket a multiple of ROW_BUCKET, the row counts at which a CPU matmul's rows
    measured independent of each other: see EngineConfig.prediction_pad)."""
    return -(-rows // ROW_BUCKET) * ROW_BUCKET


def row_buckets(rows: int) -> tuple[int, ...]:
    """ROW_BUCKET * 2^i below `rows`, then `rows` itself; just `rows` when it is not a multiple of ROW_BUCKET."""
    return tuple(_doubling(ROW_BUCKET, rows)) if rows % ROW_BUCKET == 0 else (rows,)


@dataclass(frozen=True)
class Region:
    """Rows start .. start + buckets[-1] - 1 of the decoder, stepped in buckets of `buckets` rows from `start`: the
    live sessions' region has growing buckets, the predictions' one bucket (its row count never changes, so no
    prediction's bytes depend on how many others run: EngineConfig.prediction_pad)."""

    start: int
    buckets: tuple[int, ...]

    @property
    def stop(self) -> int:
        return self.start + self.buckets[-1]


@dataclass
class _Captured:
    graph: tp.Any  # torch.cuda.CUDAGraph
    logits: torch.Tensor
    cache_version: int  # the decoder's cache_version when captured: the graph reads the caches of that version


@dataclass
class GraphStats:
    """What /health says about the CUDA graphs: how many, how long capturing them took, the memory they hold,
    and how many were captured after the start (0 unless the cross cache was reallocated)."""

    graphs: int = 0
    capture_seconds: float = 0.0
    memory_bytes: int = 0
    late_captures: int = 0


class CapturableStep:
    """Runs `step_function` over a bucket of a region of a decoder's rows: eagerly, through
    torch.compile(fullgraph=True), and on CUDA replayed from CUDA graphs captured once per (region, bucket,
    window)."""

    def __init__(self, decoder: StepDecoder, compiled: bool, graphs: tp.Optional[bool] = None,
                 min_window: tp.Optional[int] = MIN_WINDOW, regions: tp.Optional[tp.Sequence[Region]] = None) -> None:
        """`regions` (by default all rows, as one) are disjoint and sorted; each call steps rows of one of them."""
        self.decoder = decoder
        self.compiled = compiled
        self.windows = _doubling(min_window, decoder.max_steps) if min_window else [decoder.max_steps]
        self.regions = tuple(regions) if regions else (Region(0, row_buckets(decoder.max_rows)),)
        if self.regions[-1].stop > decoder.max_rows:
            raise ValueError(f"regions reach row {self.regions[-1].stop}; the decoder has {decoder.max_rows}")
        self.graphs = decoder.device.type == "cuda" if graphs is None else graphs
        if self.graphs and not torch.cuda.is_available():
            raise ValueError("CUDA graphs need CUDA")
        self._fn = torch.compile(step_function, fullgraph=True, dynamic=False) if compiled else step_function
        # the graphs' inputs: tokens and active mask for every row (a graph reads its bucket's rows of them)
        self._tokens = torch.zeros(decoder.max_rows, decoder.num_codebooks, dtype=torch.long, device=decoder.device)
        self._active = torch.zeros(decoder.max_rows, dtype=torch.bool, device=decoder.device)
        # region start -> its active rows, their device index and that index within the region
        self._placed: dict[int, tuple[tuple[int, ...], torch.Tensor, torch.Tensor]] = {}
        self._captured: dict[tuple[int, int, int], _Captured] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.graphs else None
        self.stats = GraphStats()
        self._started = False  # capture_all has run: a capture after it is a late one

    def __call__(self, rows: tp.Union[slice, tp.Sequence[int]], tokens: torch.Tensor) -> torch.Tensor:
        """Appends tokens [R, K] to `rows` (a range or any rows of one region, in the order of `tokens`) and
        returns their logits [R, K, card]; checks capacity on the host mirrors."""
        ids = row_ids(rows)
        d = self.decoder
        d.check_step(ids)
        region = next((r for r in self.regions if r.start <= min(ids) and max(ids) < r.stop), None)
        if region is None:
            raise ValueError(f"rows {ids} are not all in one region of the capturable step")
        bucket = next(b for b in region.buckets if region.start + b > max(ids))
        window = next(w for w in self.windows if w > max(d.host_lengths[r] for r in ids))
        index, in_region = self._place(region, ids)
        self._tokens.index_copy_(0, index, tokens)
        if self.graphs:
            captured = self._graph(region, bucket, window)
            captured.graph.replay()
            logits = captured.logits
        else:
            logits = self._fn(*self._inputs(region, bucket, window))
        d.advance_host(ids, 1)
        return logits.index_select(0, in_region)  # a copy: a graph's output is overwritten by its next replay

    def capture_all(self) -> GraphStats:
        """Captures every (region, bucket, window) graph, largest first, into one pool (a smaller one reuses the
        larger ones' work memory: graphs never run at once). Reserves the whole cross cache first, so no condition
        can reallocate what the graphs read. Call it on the thread that steps, with no other thread using the GPU
        (the capture itself tolerates them: thread_local)."""
        if not self.graphs:
            return self.stats
        self.decoder.reserve_condition_capacity()
        torch.cuda.synchronize()
        started, reserved = time.perf_counter(), torch.cuda.memory_reserved()
        shapes = sorted(((region, bucket, window) for region in self.regions for bucket in region.buckets
                         for window in self.windows), key=lambda shape: (shape[1] * shape[2], shape[0].start),
                        reverse=True)
        for region, bucket, window in shapes:
            self._captured[(region.start, bucket, window)] = self._capture(region, bucket, window)
        torch.cuda.synchronize()
        self.stats = GraphStats(graphs=len(self._captured), capture_seconds=round(time.perf_counter() - started, 3),
                                memory_bytes=torch.cuda.memory_reserved() - reserved)
        self._started = True
        logger.info("captured %d CUDA graphs of the decode step (row buckets %s, windows %s) in %.2f s, holding "
                    "%.0f MB", self.stats.graphs, [list(r.buckets) for r in self.regions], self.windows,
                    self.stats.capture_seconds, self.stats.memory_bytes / 2**20)
        return self.stats

    def _place(self, region: Region, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The device index of `ids` in the decoder and in the region, with the region's active mask set to them;
        uploaded only when the region's rows change."""
        key = tuple(ids)
        placed = self._placed.get(region.start)
        if placed is None or placed[0] != key:
            index = torch.tensor(ids, dtype=torch.long, device=self.decoder.device)
            self._active[region.start: region.stop].zero_()
            self._active[index] = True
            placed = self._placed[region.start] = (key, index, index - region.start)
        return placed[1], placed[2]

    def _inputs(self, region: Region, bucket: int, window: int) -> tuple:
        d, rows = self.decoder, slice(region.start, region.start + bucket)
        return (d, list(d.keys[:, rows, :, :window]), list(d.values[:, rows, :, :window]), d.cross_keys[:, rows],
                d.cross_values[:, rows], d.cross_lengths[rows], d.lengths[rows], self._tokens[rows],
                self._active[rows], d.adapter_rows[rows] if d.transformer.lora is not None else None)

    def _graph(self, region: Region, bucket: int, window: int) -> _Captured:
        key = (region.start, bucket, window)
        captured = self._captured.get(key)
        if captured is None or captured.cache_version != self.decoder.cache_version:
            if self._started:
                self.stats.late_captures += 1
                logger.warning("capturing the decode step's graph for rows %d..%d, window %d, while streams play "
                               "(%s)", region.start, region.start + bucket - 1, window,
                               "the cross cache was reallocated" if captured else "not captured at start")
            captured = self._captured[key] = self._capture(region, bucket, window)
        return captured

    def _capture(self, region: Region, bucket: int, window: int) -> _Captured:
        """Warms up on a side stream (compiling if asked), then captures; both with no row of the region active,
        so neither changes a cache or a length, whatever streams hold the rows."""
        inputs = self._inputs(region, bucket, window)
        active = self._active[region.start: region.stop]
        was_active = active.clone()
        active.zero_()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._fn(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits = self._fn(*inputs)
        active.copy_(was_active)
        return _Captured(graph, logits, self.decoder.cache_version)


def _doubling(smallest: int, largest: int) -> list[int]:
    """smallest * 2^i below largest, then largest itself."""
    sizes, size = [], smallest
    while size < largest:
        sizes.append(size)
        size *= 2
    return sizes + [largest]


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
        return "static", "CUDA: the capturable step, replayed from CUDA graphs captured at start"
    return "off", "CPU: the eager forward (the compiled step measured within 10% of it, for ~25 s compiles)"
