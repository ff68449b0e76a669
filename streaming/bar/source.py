"""A bar-mode chunk source: chunks of whole bars at the client's tempo and rate, cut sample-exact from one
continuous stream that continues the client's loop.

The source wraps one engine `LiveSession` opened with the loop's bar-aligned context as its prompt, so the
model's first generated sample is the bar line after the loop's end. The session's chunks (model rate) go through
one `StreamingResampler` into a `Spool` at the target rate, from which bar chunk k is cut at
`BarClock.chunk_bounds(k)`; the leftover past a boundary stays for the next chunk. A reseed (new loop) or a
splice starts a new model stream at a chunk boundary: the spool seams there (crossfaded) and a new resampler
runs from it, so the output timeline never moves.

It has `LiveSession`'s interface (`next_chunk(deadline) -> Future`, `update`, `restart(seed)`, `close`), plus
`reseed` and `reseed_splice`. Chunks are produced one at a time, in order, on the source's own thread, which
waits on the engine's futures (they always resolve: a closed session fails them with SessionClosed).
"""

import logging
import threading
import typing as tp
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch

from engine.api import Description, SamplingParams, SessionClosed, SessionSettings, random_seed
from streaming.bar.timeline import BarClock, Spool, exact_bpm, loop_context, loop_slice, spliced_context, style_blend
from streaming.formats import StreamingResampler, match_loudness, resample, to_channels

logger = logging.getLogger(__name__)

MODEL_CHUNK_SECONDS = 2.0  # what the source asks the engine for at a time; bar chunks are cut across them
OUTPUT_CHANNELS = 2  # magenta-retry's chunks are always stereo
SEAM_CROSSFADE_SECONDS = 0.01


@dataclass(frozen=True)
class BarParams:
    """A bar session's parameters (validated by the protocol that parsed them)."""

    bpm: float
    beats_per_bar: int
    bars_per_chunk: int
    target_sr: int
    loudness_mode: str = "none"
    headroom_db: float = 1.0
    styles: tuple[str, ...] = ()
    style_weights: tuple[float, ...] = ()
    loop_weight: float = 1.0
    guidance_weight: float = 1.1
    temperature: float = 1.1
    topk: int = 40
    model: tp.Optional[str] = None  # the adapter (SessionRegistry.model, magenta-retry's /model/select)

    @property
    def clock(self) -> BarClock:
        return BarClock(self.target_sr, exact_bpm(self.bpm), self.beats_per_bar)

    def settings(self) -> SessionSettings:
        """The engine settings: styles blended with the loop's weight (streaming.bar.timeline.style_blend)."""
        styles, weights, guidance = style_blend(self.styles, self.style_weights, self.loop_weight,
                                                self.guidance_weight)
        return SessionSettings(styles=styles, weights=weights, chunk_seconds=MODEL_CHUNK_SECONDS,
                           params=SamplingParams(temperature=self.temperature, top_k=self.topk, guidance=guidance),
                           model=self.model)


@dataclass(frozen=True)
class BarChunk:
    index: int
    audio: torch.Tensor  # [2, samples] at sample_rate: exactly bars_per_chunk bars of the bar clock
    sample_rate: int
    seconds: float
    params: BarParams  # in force when the chunk was cut
    loudness: dict  # what loudness matching did
    frames: torch.Tensor  # [K, n] the model's tokens that completed while it was made (for the recording)
    settings: SessionSettings  # the engine settings in force (for the recording's timeline)
    changes: tuple = ()  # settings that start inside the chunk, as engine.work.chunk.Chunk has them (none are tracked)


def context_window(model: Description) -> tuple[int, int]:
    """The context length at the model rate (whole codec frames of the context MusicGen keeps when its window
    rolls, `keep_seconds`) and the codec hop."""
    hop = int(round(model["sample_rate"] / model["frame_rate"]))
    return int(model["keep_seconds"] * model["frame_rate"]) * hop, hop


class BarSource:
    def __init__(self, engine, params: BarParams, loop: tuple[torch.Tensor, int], seed: int) -> None:
        """Opens the engine session (blocking, taking a slot: CapacityError when none is free)."""
        self.engine = engine
        self.params = params
        described = engine.describe()
        self.model_rate, self.model_channels = described["sample_rate"], described["channels"]
        self.window, _ = context_window(described)
        self._lock = threading.Lock()
        self._requested = 0  # chunks asked for
        self._produced = 0  # chunks made (the source's thread): the next chunk's index
        self._stream_start = 0  # the output sample where the model stream in use began (a chunk boundary)
        self._codebooks = 0  # of the model's tokens (known from its first chunk, which every source asks for)
        self._closed = False
        self._splice: tp.Optional[tuple[float, tp.Optional[torch.Tensor]]] = None
        self._set_loop(loop)
        self.spool = Spool(OUTPUT_CHANNELS, history=round(self.window * params.target_sr / self.model_rate),
                           crossfade=round(SEAM_CROSSFADE_SECONDS * params.target_sr))
        self._resampler = StreamingResampler(self.model_rate, params.target_sr, OUTPUT_CHANNELS)
        self.session = engine.open_session(params.settings(), seed, prompt=(self._context(), self.model_rate))
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="bar-source")

    @property
    def sample_rate(self) -> int:
        return self.params.target_sr

    def _set_loop(self, loop: tuple[torch.Tensor, int]) -> None:
        wav, rate = loop
        self._loop_model = resample(to_channels(wav, self.model_channels), rate, self.model_rate)
        self._loop_out = resample(to_channels(wav, OUTPUT_CHANNELS), rate, self.params.target_sr)  # loudness reference

    def _model_clock(self) -> BarClock:
        return replace(self.params.clock, sample_rate=self.model_rate)

    def _context(self) -> torch.Tensor:
        return loop_context(self._loop_model, self._model_clock(), self.window)[0]

    # -- LiveSession's interface -------------------------------------------------------------------------------
    def next_chunk(self, deadline: tp.Optional[float] = None) -> "Future[BarChunk]":
        """The next chunk (they come in order; one that failed leaves no gap: the next one takes its index)."""
        with self._lock:
            self._requested += 1
        return self._submit(lambda: self._produce(deadline))

    def update(self, params: BarParams) -> "Future[int]":
        """New styles, weights or sampling parameters from the stream's next decode step (the context is kept).
        Raises ValueError for settings the engine cannot take; the future gives the index of the bar chunk where
        they start (the engine's placement on the stream, mapped onto the bar timeline), or fails when the engine
        could not apply them (the parameters in force then stay)."""
        placed = self.session.update(params.settings())
        answer: Future = Future()

        def applied(done: Future) -> None:
            if done.exception() is not None:
                answer.set_exception(done.exception())
                return
            with self._lock:
                self.params = replace(self.params, styles=params.styles, style_weights=params.style_weights,
                                      loop_weight=params.loop_weight, guidance_weight=params.guidance_weight,
                                      temperature=params.temperature, topk=params.topk)
                start = self._stream_start + round(done.result().stream_seconds * self.params.target_sr)
            clock = self.params.clock
            answer.set_result(int(start / (clock.samples_per_bar * self.params.bars_per_chunk)))

        placed.add_done_callback(applied)
        return answer

    def restart(self, seed: int) -> "Future[None]":
        """After a generation failure: a fresh stream on the same slot continuing the loop again, from the next
        chunk boundary (bar chunk indices go on; the timeline does not move)."""
        return self._submit(lambda: self._reseed(seed, None))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.session.close()  # fails a model chunk in flight, so the source's thread ends its work
        self._thread.shutdown(wait=False, cancel_futures=True)

    # -- bar mode's own --------------------------------------------------------------------------------------
    def reseed(self, loop: tp.Optional[tuple[torch.Tensor, int]], seed: int) -> "Future[None]":
        """A new loop as the context from the next chunk boundary on (after the chunk in the making, if any);
        None: the stream's own recent audio becomes the loop (magenta-retry's reseed without a file)."""
        return self._submit(lambda: self._reseed(seed, loop or self._recent_loop()))

    def reseed_splice(self, anchor_bars: float, combined: tp.Optional[tuple[torch.Tensor, int]] = None) -> None:
        """Right after the next chunk: the context becomes the stream's own recent audio with its last
        `anchor_bars` bars replaced by those of `combined` (the client's current mix; default: the loop)."""
        anchor = None if combined is None else resample(to_channels(combined[0], self.model_channels),
                                                        combined[1], self.model_rate)
        with self._lock:
            self._splice = (anchor_bars, anchor)

    # -- the source's thread ---------------------------------------------------------------------------------
    def _submit(self, work: tp.Callable[[], tp.Any]) -> Future:
        with self._lock:
            closed = self._closed
        if not closed:
            try:
                return self._thread.submit(work)
            except RuntimeError:  # shut down meanwhile
                pass
        future: Future = Future()
        future.set_exception(SessionClosed("session is closed"))
        return future

    def _produce(self, deadline: tp.Optional[float]) -> BarChunk:
        params, index = self.params, self._produced
        start, end = params.clock.chunk_bounds(index, params.bars_per_chunk)
        frames = []
        while self.spool.end < end:
            chunk = self.session.next_chunk(deadline=deadline).result()
            frames.append(chunk.frames.cpu())
            self._codebooks = chunk.frames.shape[0]
            samples = int(round(chunk.seconds * chunk.sample_rate))
            self.spool.append(self._resampler.process(chunk.audio[:, :samples], chunk.audio[:, samples:]))
        audio = self.spool.cut(start, end)
        loudness: dict = {"method": "none", "applied_gain_db": 0.0}
        if params.loudness_mode != "none":
            audio, loudness = match_loudness(loop_slice(self._loop_out, start, end - start), audio,
                                             params.target_sr, params.loudness_mode, params.headroom_db)
        self._produced += 1
        with self._lock:
            splice, self._splice = self._splice, None
        if splice is not None:
            self._install_splice(*splice)
        return BarChunk(index=index, audio=audio, sample_rate=params.target_sr,
                        seconds=(end - start) / params.target_sr, params=params, loudness=loudness,
                        frames=torch.cat(frames, dim=-1) if frames else torch.zeros(self._codebooks, 0,
                                                                                    dtype=torch.long),
                        settings=params.settings())

    def _reseed(self, seed: int, loop: tp.Optional[tuple[torch.Tensor, int]]) -> None:
        if loop is not None:
            self._set_loop(loop)
        self._restart_on(seed, self._context())

    def _recent_loop(self) -> tuple[torch.Tensor, int]:
        recent = self.spool.recent()
        if recent.shape[-1] == 0:
            raise ValueError("No internal stream to reseed from yet: send a loop")
        return recent, self.params.target_sr

    def _install_splice(self, anchor_bars: float, anchor: tp.Optional[torch.Tensor]) -> None:
        recent = resample(to_channels(self.spool.recent(), self.model_channels), self.params.target_sr,
                          self.model_rate)
        context = spliced_context(recent, self._loop_model if anchor is None else anchor, self._model_clock(),
                                  anchor_bars, self.window)
        self._restart_on(random_seed(), context)

    def _restart_on(self, seed: int, context: torch.Tensor) -> None:
        """A new model stream continuing `context` from the spool's last cut (a chunk boundary, a bar line)."""
        self.session.restart_from(seed, (context, self.model_rate))
        self.spool.seam()
        with self._lock:
            self._stream_start = self.spool.cut_at
        self._resampler = StreamingResampler(self.model_rate, self.params.target_sr, OUTPUT_CHANNELS)
