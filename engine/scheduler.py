"""The engine thread: it alone touches the model, running queued jobs and batched decode steps of all streams.

Every change to scheduler state (streams added, updated, removed, demand raised) arrives as a job, so the state
needs no locks. Between jobs, all streams that want frames advance together: streams on adjacent decoder rows
share one forward per step. Long jobs that cannot be split into steps (audiocraft's own generate, used for melody
models) call `yield_to_streams` from their progress callback, so live streams keep flowing.
"""

import logging
import queue
import threading
import typing as tp
from concurrent.futures import Future

import torch

from engine.conditions import text_condition
from engine.decoder import StepDecoder
from engine.streams import Stream, sample

logger = logging.getLogger(__name__)

T = tp.TypeVar("T")


class Scheduler:
    def __init__(self, lm, max_rows: int, max_steps: int, weight_format: str = "float32") -> None:
        self.lm = lm
        self.decoder = StepDecoder(lm, max_rows=max_rows, max_steps=max_steps, weight_format=weight_format)
        self.streams: list[Stream] = []
        self._jobs: queue.SimpleQueue[tp.Optional[tuple[Future, tp.Callable[[], tp.Any]]]] = queue.SimpleQueue()
        self._condition_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._in_job = False
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------------------------------
    def call(self, fn: tp.Callable[[], T]) -> "Future[T]":
        """Runs `fn` on the engine thread; the future carries its result or exception."""
        future: Future[T] = Future()
        self._jobs.put((future, fn))
        return future

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    @property
    def rows_free(self) -> int:
        return self.decoder.max_rows - sum(s.conditioning.rows for s in self.streams)

    # -- engine thread only -------------------------------------------------------------------------------------
    def add_stream(self, stream: Stream) -> None:
        if stream.conditioning.rows > self.rows_free:
            raise RuntimeError(f"no decoder rows left ({self.rows_free} free, {stream.conditioning.rows} needed)")
        self._relayout(self.streams + [stream], {id(stream): None})

    def remove_stream(self, stream: Stream) -> None:
        if stream in self.streams:
            self._relayout([s for s in self.streams if s is not stream], {})

    def set_conditioning(self, stream: Stream, conditioning) -> None:
        """Swaps a stream's styles from its next step on, keeping its context: existing rows keep their caches,
        added styles start from a copy of the first style's context."""
        grow = conditioning.rows - stream.conditioning.rows
        if grow > self.rows_free:
            raise RuntimeError(f"no decoder rows left for {conditioning.rows - 1} styles")
        old_rows = stream.rows
        stream.conditioning = conditioning
        stream.conditions_dirty = True
        self._relayout(list(self.streams), {id(stream): old_rows})

    def yield_to_streams(self) -> None:
        """One batched step for the streams that want frames; called from inside long jobs."""
        active = [s for s in self.streams if s.wants_steps()]
        if active:
            self._step(active)

    def _relayout(self, streams: list[Stream], resized: dict[int, tp.Optional[slice]]) -> None:
        sources: list[int] = []
        for stream in streams:
            count = stream.conditioning.rows
            if id(stream) in resized and resized[id(stream)] is None:  # new stream: rows filled by prefill
                rows = list(range(count))
            else:
                old = resized.get(id(stream), stream.rows)
                old_cond = list(range(old.start, old.stop - 1))
                rows = [old_cond[i] if i < len(old_cond) else old_cond[0] for i in range(count - 1)] + [old.stop - 1]
            start = len(sources)
            sources.extend(rows)
            stream.rows = slice(start, start + count)
        self.decoder.relayout(sources)
        self.streams = streams

    def _condition(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        if text not in self._condition_cache:
            if len(self._condition_cache) > 256:
                self._condition_cache.clear()
            self._condition_cache[text] = text_condition(self.lm, text)
        return self._condition_cache[text]

    def _apply_conditions(self, stream: Stream) -> None:
        texts = stream.conditioning.texts + [""]
        for offset, text in enumerate(texts):
            embeds, mask = self._condition(text)
            self.decoder.set_condition(stream.rows.start + offset, embeds, mask)
        stream.conditions_dirty = False

    def _step(self, active: list[Stream]) -> None:
        for stream in active:
            if stream.conditions_dirty:
                self._apply_conditions(stream)
            if stream.pending_prefill == 0 and stream.frames.step + 1 > self.decoder.max_steps:
                stream.roll_window()
            if stream.pending_prefill:
                self.decoder.reset(stream.rows)
        prefilling = [s for s in active if s.pending_prefill]
        stepping = [s for s in active if not s.pending_prefill]
        logits_by_stream: dict[int, torch.Tensor] = {}
        for stream in prefilling:  # one parallel forward over the whole prompt
            steps = stream.frames.sequence_values(0, stream.pending_prefill)
            tokens = steps.expand(stream.conditioning.rows, -1, -1)
            logits_by_stream[id(stream)] = self.decoder.forward(stream.rows, tokens)[:, :, -1]
            stream.pending_prefill = 0
        for run in _contiguous_runs(stepping):
            inputs = [s.frames.sequence_values(s.frames.step - 1, s.frames.step)
                      .expand(s.conditioning.rows, -1, -1) for s in run]
            rows = slice(run[0].rows.start, run[-1].rows.stop)
            logits = self.decoder.forward(rows, torch.cat(inputs))[:, :, -1]
            for stream in run:
                local = slice(stream.rows.start - rows.start, stream.rows.stop - rows.start)
                logits_by_stream[id(stream)] = logits[local]
        for stream in active:
            guided = stream.guided_logits(logits_by_stream[id(stream)])
            stream.frames.accept(sample(guided, stream.params, stream.generator).view(1, -1))
            if stream.on_frames is not None:
                stream.on_frames(stream)

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            active = [s for s in self.streams if s.wants_steps()]
            try:
                job = self._jobs.get_nowait() if active else self._jobs.get()
            except queue.Empty:
                job = False
            if job is None:
                return
            if job:
                future, fn = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # the caller gets every failure; the thread lives on
                        future.set_exception(exc)
                continue
            try:
                self._step(active)
            except Exception as exc:
                logger.exception("decode step failed; dropping the streams involved")
                for stream in active:
                    self.remove_stream(stream)
                    stream.error = exc
                    if stream.on_frames is not None:
                        stream.on_frames(stream)


def _contiguous_runs(streams: list[Stream]) -> list[list[Stream]]:
    """Groups live streams on adjacent rows into one forward. A finite stream (a prediction) always runs alone:
    a batched matmul may round differently from a single one, and a seeded prediction must give the same bytes
    whatever sessions run beside it."""
    runs: list[list[Stream]] = []
    for stream in sorted(streams, key=lambda s: s.rows.start):
        shareable = stream.target_frames is None and runs and runs[-1][-1].target_frames is None
        if shareable and runs[-1][-1].rows.stop == stream.rows.start:
            runs[-1].append(stream)
        else:
            runs.append([stream])
    return runs
