"""Streams over decoder rows: the LM thread's background work, one batched decode step at a time.

Every change to scheduler state (streams added, updated, removed, demand raised) arrives as a job on the LM
worker, so the state needs no locks. Between jobs, the streams that want frames advance together: live streams share
one forward per step, predictions another (each kind in its own rows: engine.runtime.placement), and a long prefill (an
audio prompt, a window roll-over) runs in slices between other streams' steps. A stream keeps its decoder rows from
start to end: opening and closing a stream, and restyling one that has room beside it, move no cache (StepDecoder
attends per block of adjacent rows; the capturable step computes a bucket of rows with an active mask). A failure
belongs to the stream that caused it: conditioning, prefill, forward, sampling and the consumer's callback are each
guarded per stream, and the others advance in the same step. Live streams step whenever they want frames;
predictions step only when the deadlines (engine.runtime.deadlines) admit their step: it fits in every realtime
stream's slack.
"""

import logging
import time
import typing as tp
from collections import OrderedDict

import torch

from engine.codec import melody
from engine.lm import conditions
from engine.lm.decoder import StepDecoder
from engine.lm.sampling import StepInputs, guided_sample
from engine.lm.static_step import CapturableStep, Region, padded_rows, row_buckets
from engine.lm.supported import UnsupportedModel
from engine.runtime import placement
from engine.runtime.deadlines import LM, Deadlines
from engine.runtime.streams import Stream

logger = logging.getLogger(__name__)

CONDITION_CACHE_SIZE = 256
# the kinds of the predictions' part of a step (engine.runtime.deadlines estimates each one's cost): a plain decode
# step, or one with a prefill slice, a melody prefix or a new condition in it
PREDICTION_STEP, PREDICTION_PREFILL = "prediction step", "prediction prefill"


class StreamFailed(RuntimeError):
    """One stream's generation failed; the message says in which phase and why."""


class Scheduler:
    def __init__(self, lm, live_rows: int, prediction_rows: int, max_steps: int, weight_format: str = "float32",
                 prefill_slice_steps: int = 64, step_mode: str = "off", prediction_pad: int = 0,
                 deadlines: tp.Optional[Deadlines] = None) -> None:
        """`step_mode` (see engine.lm.static_step.choose_step_mode): "off" decodes with the eager forward, "static"
        and "compile" with the capturable step, eagerly or compiled (on CUDA, replayed from CUDA graphs).

        Live streams take rows of the first `live_rows`, predictions of the `prediction_rows` after them (with the
        capturable step, after the live rows rounded up to a bucket step: its row regions, engine.lm.static_step).
        An LM the step decoder does not implement leaves `decoder` None and says why in `unsupported`: such a
        scheduler takes no streams, so the engine can still serve predictions through audiocraft's generate.
        `deadlines`: the realtime streams' deadlines, shared with the workers (a scheduler of its own by default)."""
        self.lm = lm
        self.deadlines = deadlines if deadlines is not None else Deadlines()
        self.live_rows = live_rows
        self.prediction_rows = prediction_rows
        capturable = step_mode != "off"
        self.prediction_start = padded_rows(live_rows) if capturable else live_rows
        # the capturable step computes the predictions' region whole: as many rows as their padded forward
        prediction_region = max(prediction_rows, prediction_pad) if capturable else prediction_rows
        self.decoder: tp.Optional[StepDecoder] = None
        self.unsupported: tp.Optional[str] = None
        try:
            self.decoder = StepDecoder(lm, max_rows=self.prediction_start + prediction_region, max_steps=max_steps,
                                       weight_format=weight_format)
        except UnsupportedModel as exc:
            self.unsupported = str(exc)
        self.capturable = None
        if self.decoder is not None and capturable:
            regions = [Region(0, row_buckets(self.prediction_start)), Region(self.prediction_start,
                                                                             (prediction_region,))]
            self.capturable = CapturableStep(self.decoder, step_mode == "compile",
                                             regions=[r for r in regions if r.buckets[-1] > 0])
        self.prefill_slice_steps = prefill_slice_steps
        self.prediction_pad = prediction_pad  # the predictions' shared forward's row count (EngineConfig)
        self.streams: list[Stream] = []
        # text -> its T5 condition, least recently used first: a jam that returns to a style finds it here
        self._condition_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._null_prefix: tp.Optional[torch.Tensor] = None
        # each run of the last step: its device inputs for guidance and sampling (see _sample), and those of the
        # step before, which the runs of this step read
        self._step_inputs: dict[tuple, tuple[StepInputs, list[int], list[Stream]]] = {}
        self._previous_inputs: dict[tuple, tuple[StepInputs, list[int], list[Stream]]] = {}

    @property
    def rows_free(self) -> int:
        return self.live_rows + self.prediction_rows - sum(s.conditioning.rows for s in self.streams)

    def _region(self, stream: Stream) -> range:
        """The rows a stream may take: the live ones, or the predictions' ones."""
        if stream.target_frames is None:
            return range(0, self.live_rows)
        return range(self.prediction_start, self.prediction_start + self.prediction_rows)

    # -- background work of the LM worker -----------------------------------------------------------------------
    def _wanting(self) -> tuple[list[Stream], list[Stream]]:
        """The live streams and the predictions that want steps now."""
        active = [s for s in self.streams if s.wants_steps()]
        return [s for s in active if s.target_frames is None], [s for s in active if s.target_frames is not None]

    def pending(self) -> bool:
        live, predictions = self._wanting()
        return bool(live) or (bool(predictions) and self.deadlines.admits(LM, self._kind(predictions)))

    def held(self) -> bool:
        """Predictions want steps the deadlines do not admit now."""
        live, predictions = self._wanting()
        return bool(predictions) and not self.deadlines.admits(LM, self._kind(predictions))

    def run_once(self) -> None:
        """One step of the live streams that want frames, then, when the deadlines admit it, one of the
        predictions (each its own forward already: no stream's tokens change by the split)."""
        live, predictions = self._wanting()
        if predictions and not self.deadlines.admits(LM, kind := self._kind(predictions)):
            predictions = []
        if not live and not predictions:
            return
        self._previous_inputs, self._step_inputs = self._step_inputs, {}
        if live:
            started = time.perf_counter()
            self._step(live)
            self.deadlines.observe_step(time.perf_counter() - started)
        if predictions:
            started = time.perf_counter()
            self._step(predictions)
            self.deadlines.observe(LM, kind, time.perf_counter() - started)
        # the runs that did not step keep their device inputs for their next step
        stepped, alive = {id(s) for s in live + predictions}, {id(s) for s in self.streams}
        for key, entry in self._previous_inputs.items():
            if key not in self._step_inputs and all(id(s) in alive and id(s) not in stepped for s in entry[2]):
                self._step_inputs[key] = entry

    def _kind(self, predictions: list[Stream]) -> str:
        """The kind of the predictions' part of a step: a prefill slice, a melody prefix or a new condition costs
        more than a decode step."""
        heavy = any(s.pending_prefill or s.conditions_dirty or (self.decoder.uses_prefix and s.prefix_dirty)
                    for s in predictions)
        return PREDICTION_PREFILL if heavy else PREDICTION_STEP

    def yield_to_streams(self) -> None:
        """Called from inside long jobs (audiocraft's own generate) so that streams keep flowing."""
        self.run_once()

    # -- stream management (LM thread) ---------------------------------------------------------------------------
    def add_stream(self, stream: Stream) -> None:
        """Places a stream on the first free block of rows it fits, moving no cache; only when the free rows are
        scattered are the others packed first. Raises (and changes nothing) when there are no rows for it or
        that packing copy fails."""
        if self.decoder is None:
            raise RuntimeError(f"this model cannot run streams: {self.unsupported}")
        needed, region = stream.conditioning.rows, self._region(stream)
        free = placement.free_rows(self.streams, region)
        if needed > free:
            raise RuntimeError(f"no decoder rows left ({free} free, {needed} needed)")
        start = placement.free_block(self.streams, needed, region)
        if start is None:  # only live streams can be scattered: every prediction takes the same rows
            self._relayout(self._live() + [stream])
            return
        stream.rows = slice(start, start + needed)
        self.streams = self.streams + [stream]

    def remove_stream(self, stream: Stream) -> None:
        """Frees a stream's rows, moving nothing; never raises."""
        self.streams = [s for s in self.streams if s is not stream]

    def set_conditioning(self, stream: Stream, conditioning, sources: tp.Optional[list[int]] = None) -> None:
        """Swaps a stream's styles from its next step on, keeping its context: style row i continues the cache of
        the stream's style row `sources[i]` (by default the one in the same place, and added styles the first
        one's), the unconditional row stays. The stream keeps its place when the rows it needs there are free,
        else moves to a free block (only its own rows are copied), else the others are packed. Raises (and
        changes nothing) when there are no rows for it or the cache copy fails."""
        rows, region = conditioning.rows, self._region(stream)
        if rows - stream.conditioning.rows > placement.free_rows(self.streams, region):
            raise RuntimeError(f"no decoder rows left for {rows - 1} styles")
        if sources is None:
            styled = stream.conditioning.rows - 1
            sources = [i if i < styled else 0 for i in range(rows - 1)]
        old = stream.rows
        in_place = placement.is_free(self.streams, old.start, rows, region, stream)
        start = old.start if in_place else placement.free_block(self.streams, rows, region, stream)
        if start is None:
            self._relayout(self._live(), {id(stream): sources})
        else:  # copies only the rows that change; all or nothing
            self.decoder.relayout(placement.restyled(self.decoder.max_rows, old, sources, start))
            stream.rows = slice(start, start + rows)
        stream.conditioning = conditioning
        stream.conditions_dirty = True

    def _live(self) -> list[Stream]:
        return [s for s in self.streams if s.target_frames is None]

    def fail(self, stream: Stream, phase: str, exc: BaseException) -> None:
        """Drops one stream and tells its consumer; never raises."""
        logger.warning("stream failed during %s: %s: %s", phase, type(exc).__name__, exc)
        self.remove_stream(stream)
        stream.error = StreamFailed(f"{phase} failed: {type(exc).__name__}: {exc}")
        if stream.on_failed is not None:
            callback, stream.on_failed = stream.on_failed, None
            try:
                callback(stream, stream.error)
            except Exception:
                logger.exception("a stream's failure callback raised")

    def _relayout(self, streams: list[Stream], style_sources: tp.Optional[dict[int, list[int]]] = None) -> None:
        """Packs the live `streams` onto rows 0.. in order and makes them the scheduler's live streams (when
        scattered free rows hold no block that fits); predictions stay where they are. A stream whose styles
        change has in `style_sources` (by id) the style row of its own that each new style row continues; the
        others keep their rows' contents. Nothing moves (caches, rows, the stream list) unless the decoder's copy
        succeeded: a copy can run out of memory on a GPU, and the other streams must go on from the caches they
        point at."""
        sources, layout = placement.packing(streams, {id(s) for s in self.streams}, style_sources or {})
        self.decoder.relayout(sources)
        for stream, rows in zip(streams, layout, strict=True):
            stream.rows = rows
        self.streams = list(streams) + [s for s in self.streams if s.target_frames is not None]

    # -- one step -----------------------------------------------------------------------------------------------
    def _attempt(self, stream: Stream, phase: str, fn: tp.Callable[[], tp.Any]) -> tuple[bool, tp.Any]:
        try:
            return True, fn()
        except Exception as exc:  # isolated to this stream
            self.fail(stream, phase, exc)
            return False, None

    def _step(self, active: list[Stream]) -> None:
        """One decode step of `active` (or a prefill slice where one is pending)."""
        ready = [s for s in active if self._attempt(s, "conditioning", lambda s=s: self._prepare(s))[0]]
        groups: list[tuple[list[Stream], torch.Tensor]] = []  # streams and the logits of their rows
        prefilling = [s for s in ready if s.pending_prefill]
        stepping = [s for s in ready if not s.pending_prefill]
        for stream in prefilling:
            ok, out = self._attempt(stream, "prefill", lambda s=stream: self._prefill_slice(s))
            if ok and out is not None:
                groups.append(([stream], out))
        for run in _runs(stepping):
            try:
                groups.append((run, self._forward(run)))
            except Exception as exc:  # find the culprit: each stream of the run alone
                if len(run) == 1:
                    self.fail(run[0], "decode step", exc)
                    continue
                for stream in run:
                    ok, out = self._attempt(stream, "decode step", lambda s=stream: self._forward([s]))
                    if ok:
                        groups.append(([stream], out))
        for streams, logits in groups:
            try:
                tokens = self._sample(streams, logits, self._previous_inputs)
            except Exception as exc:  # each stream alone, on its own rows' logits
                if len(streams) == 1:
                    self.fail(streams[0], "sampling", exc)
                    continue
                tokens = []
                for stream, first in zip(streams, _first_rows(streams), strict=True):
                    own = logits[first: first + stream.conditioning.rows]
                    ok, out = self._attempt(stream, "sampling", lambda s=stream, o=own: self._sample([s], o, {}))
                    tokens.append(out[0] if ok else None)
            for stream, stream_tokens in zip(streams, tokens, strict=True):
                if stream_tokens is None or stream.error is not None:
                    continue
                ok, _ = self._attempt(stream, "sampling", lambda s=stream, t=stream_tokens: s.accept_tokens(t))
                if ok and stream.on_frames is not None:
                    self._attempt(stream, "delivering frames", lambda s=stream: s.on_frames(s))

    def _sample(self, streams: list[Stream], logits: torch.Tensor, previous: dict) -> torch.Tensor:
        """Tokens [S, K] of one step for streams on consecutive rows, from the logits of those rows. The device
        inputs are rebuilt only when the streams, their settings or their draw counts differ from the previous
        step's (the counts advance on the device in step with each stream's host count)."""
        key = tuple((id(s), s.row_settings(first)) for s, first in zip(streams, _first_rows(streams), strict=True))
        draws = [s.draws for s in streams]
        cached = previous.get(key)
        if cached is None or cached[1] != draws:
            cached = (StepInputs([settings for _, settings in key], draws, logits.device), draws, streams)
        tokens = guided_sample(logits, cached[0])
        # the streams are held with their entry, so that no new stream can reuse an id of the key
        self._step_inputs[key] = (cached[0], [d + 1 for d in draws], streams)
        return tokens

    def set_melody(self, stream: Stream, prefix: tp.Optional[torch.Tensor]) -> None:
        """A new melody (or none) from the stream's next step on; its context is re-prefilled after the prefix."""
        stream.melody = prefix
        stream.prefix_dirty = True

    def _prepare(self, stream: Stream) -> None:
        if stream.conditions_dirty:
            texts = stream.conditioning.texts + [""]
            for offset, text in enumerate(texts):
                self.decoder.set_condition(stream.rows.start + offset, *self._condition(text))
            self.decoder.set_adapter(stream.rows, stream.adapter)
            stream.conditions_dirty = False
        if stream.pending_prefill == 0 and stream.frames.step + 1 > self.decoder.capacity(stream.rows):
            stream.roll_window()  # before a new prefix: its re-prefill is then the rolled window's
        if self.decoder.uses_prefix and stream.prefix_dirty:
            self._apply_prefix(stream)

    def _apply_prefix(self, stream: Stream) -> None:
        """Melody models prepend a chroma to every row: the stream's melody on its styled rows, the null one on
        its unconditional row (and on all rows without a melody), as audiocraft's classifier-free guidance does.
        The prefix replaces the rows' context, so what the stream has generated is prefilled again after it."""
        if self._null_prefix is None:
            self._null_prefix = melody.melody_condition(self.lm, None, 32000)
        styled = self._null_prefix if stream.melody is None else stream.melody
        rows = stream.conditioning.rows
        self.decoder.set_prefix(stream.rows, torch.stack([styled] * (rows - 1) + [self._null_prefix]))
        stream.prefix_dirty = False
        if not stream.pending_prefill:
            stream.pending_prefill, stream.prefilled = stream.frames.step, 0

    def _condition(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self._condition_cache
        if text in cache:
            cache.move_to_end(text)
        else:
            if len(cache) >= CONDITION_CACHE_SIZE:
                cache.popitem(last=False)  # the least recently used
            cache[text] = conditions.text_condition(self.lm, text)
        return cache[text]

    def _prefill_slice(self, stream: Stream) -> tp.Optional[torch.Tensor]:
        """Feeds the next slice of a pending prefill; returns the last logits once the prefill is complete."""
        start = stream.prefilled
        end = min(stream.pending_prefill, start + self.prefill_slice_steps)
        if start == 0:
            self.decoder.reset(stream.rows)
        steps = stream.frames.sequence_values(start, end).expand(stream.conditioning.rows, -1, -1)
        out = self.decoder.forward(stream.rows, steps, last_only=True)[:, :, -1]
        stream.prefilled = end
        if end < stream.pending_prefill:
            return None
        stream.pending_prefill = stream.prefilled = 0
        return out

    def _forward(self, run: list[Stream]) -> torch.Tensor:
        """Logits [R, K, card] of one step for the rows of `run`'s streams, in order: the live streams', or the
        predictions'. The capturable step takes a run's rows in one call (a bucket of its region's rows). Else live
        streams share one forward (attending in blocks of adjacent rows); predictions share theirs among
        themselves, padded to a fixed row count, so that none of them depends on the others (see
        StepDecoder.step_streams, EngineConfig.prediction_pad)."""
        inputs = torch.cat([s.frames.next_input().expand(s.conditioning.rows, -1) for s in run])
        if self.capturable is not None:
            return self.capturable([row for s in run for row in range(s.rows.start, s.rows.stop)], inputs)
        if run[0].target_frames is not None:
            return self.decoder.step_streams([s.rows for s in run], inputs, pad_to=self.prediction_pad)
        return self.decoder.step_streams(_blocks(run), inputs, pad_to=0)


def _blocks(streams: list[Stream]) -> list[slice]:
    """The rows of streams sorted by row, adjacent ones merged: one attention call each."""
    blocks: list[slice] = []
    for stream in streams:
        if blocks and blocks[-1].stop == stream.rows.start:
            blocks[-1] = slice(blocks[-1].start, stream.rows.stop)
        else:
            blocks.append(stream.rows)
    return blocks


def _first_rows(streams: list[Stream]) -> list[int]:
    """Where each stream's rows start in the logits of a forward over `streams` (their rows in order)."""
    firsts, row = [], 0
    for stream in streams:
        firsts.append(row)
        row += stream.conditioning.rows
    return firsts


def _runs(streams: list[Stream]) -> list[list[Stream]]:
    """The forwards of one step: the live streams' and one for all predictions, each in rows of its own
    (engine.runtime.placement), so the predictions' forward has the same rows however many run."""
    live = sorted((s for s in streams if s.target_frames is None), key=lambda s: s.rows.start)
    predictions = [s for s in streams if s.target_frames is not None]
    return [run for run in (live, predictions) if run]

