"""Live sessions: endless music in chunks, steered live, on the shared engine.

A session is a stream the LM thread steps only while a chunk is wanted; the chunk's tokens then go to the codec
thread, which decodes them while the LM thread goes on with other work. Each chunk carries `overlap_seconds` of
audio past its end that is identical to the start of the next chunk, so a client that crossfades over the overlap
(as the seed's browser client does) plays a seamless stream. Updates and melodies apply from the next decode step
of the chunk in the making (engine.work.steering says where that lands in the audio, and why it is reproducible); the
context is kept, so the music turns rather than restarts.

A chunk asked for with a deadline (a realtime listener's) makes the session a realtime stream of the engine's
deadlines (engine.runtime.deadlines): until it is asked for without one, the engine knows when its next chunk is due
and how much work that still is, its decodes go before later-due work on the codec thread, and batch work runs only
in the slack it leaves.
"""

import logging
import math
import threading
import time
import typing as tp
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from engine.codec.stream import StreamingCodecDecoder
from engine.runtime.deadlines import PRIOR_SECONDS
from engine.runtime.streams import Conditioning, Stream
from engine.runtime.worker import URGENT, run_in_pieces
from engine.work.chunk import Chunk, SessionClosed
from engine.work.settings import SessionSettings
from engine.work.steering import Landing, Ramp, kept_rows, place, union_blend

if tp.TYPE_CHECKING:
    from engine.runtime.context import Runtime

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    future: "Future[Chunk]"
    index: int
    requested: float
    samples: int  # new samples in this chunk (the overlap comes on top)
    due: tp.Optional[float]  # when the listener runs dry without it (time.monotonic); None: asked for asap


def _pass_failure(target: Future, source: Future) -> None:
    if source.exception() is not None and not target.done():
        target.set_exception(source.exception())


class LiveSession:
    """Opened by `Engine.open_session`; `next_chunk()`, `update()` and `close()` may be called from any thread."""

    def __init__(self, runtime: "Runtime", settings: SessionSettings, seed: int, on_close: tp.Callable[[], None],
                 overlap_seconds: float = 0.025, adapter: int = 0) -> None:
        self.runtime = runtime
        self.adapter = adapter  # the LoRA slot of every stream of this session (0: the base model)
        self.settings = settings
        self.overlap_seconds = overlap_seconds
        model = runtime.model
        self.sample_rate = model.sample_rate
        self.channels = model.channels
        self.hop = int(round(model.sample_rate / model.frame_rate))
        self._overlap = int(round(overlap_seconds * self.sample_rate))
        self._on_close = on_close
        self._lock = threading.Lock()
        self._closed = False
        self._requested = 0  # chunks asked for so far (caller threads, under the lock)
        self.failure: tp.Optional[BaseException] = None
        # LM thread
        self.stream: tp.Optional[Stream] = None
        self._pending: tp.Optional[_Request] = None
        self._next_index = 0  # the index of the next chunk request the LM thread takes up
        self._planned_samples = 0  # audio samples given to earlier chunks (their new part)
        self._prompt_frames = 0
        # settings by the stream sample they start at, from the one in force at the next chunk's start on
        self._timeline: list[tuple[int, SessionSettings]] = [(0, settings)]
        self._shrink: tp.Optional[list[str]] = None  # a glide under way: the styles it ends on
        # codec thread
        self._codec = StreamingCodecDecoder(model.musicgen.compression_model)
        self._audio = torch.zeros(model.channels, 0)  # decoded audio from sample `_audio_start` on
        self._audio_start = 0
        self._decode_times: deque[float] = deque(maxlen=8)  # the last decodes' seconds
        # the due time that orders this session's last codec job (worker.call's `due`): its jobs keep their order
        self._codec_key = 0.0
        self._key_lock = threading.Lock()
        self._deadlines = runtime.deadlines

    @classmethod
    def open(cls, runtime: "Runtime", settings: SessionSettings, seed: int, on_close: tp.Callable[[], None],
             prompt: tp.Optional[tuple[torch.Tensor, int]] = None,
             melody: tp.Optional[tuple[torch.Tensor, int]] = None, adapter: int = 0) -> "LiveSession":
        """Starts a session, optionally continuing an audio prompt and following a melody (each wav [C, T] with
        its sample rate), on LoRA slot `adapter`. Blocks until the engine has accepted it."""
        session = cls(runtime, settings, seed, on_close, adapter=adapter)
        tokens = prefix = None
        if melody is not None:
            prefix = run_in_pieces(runtime.codec_worker, runtime.melody_prefix_pieces(*melody), URGENT,
                                   label="session melody").result()
        if prompt is not None:  # the prompt is context, not output: the codec skips it
            tokens = session._codec_call(lambda: session._skip(runtime.encode_now(*prompt))).result()
        runtime.lm_worker.call(lambda: session._start(seed, tokens, prefix)).result()
        return session

    def restart(self, seed: int) -> None:
        """Goes on with a fresh context (a new stream on `seed`) on the slot this session holds, so that a
        restart never competes for a slot: built from the latest settings and melody (changes are applied in the
        order they came, on the LM thread, so those sent before the restart are in them); chunks count from 0
        again. For a failed session (its failure is cleared) and for a client's reset alike. Blocks until the
        engine has swapped the stream; SessionClosed if the session closed."""
        self._restart(seed, None)

    def restart_from(self, seed: int, prompt: tuple[torch.Tensor, int]) -> None:
        """`restart`, but the fresh stream continues the audio `prompt` (wav [C, T], rate) as its context, as `open`
        with a prompt does: a bar session's reseed, whose new context ends on a bar line. Blocks likewise."""
        tokens = self.runtime.codec_worker.call(lambda: self.runtime.encode_now(*prompt), priority=URGENT).result()
        self._restart(seed, tokens)

    def _restart(self, seed: int, tokens: tp.Optional[torch.Tensor]) -> None:
        with self._lock:
            if self._closed:
                raise SessionClosed("session is closed")
            self._requested = 0

        def swap() -> Future:
            if self._closed:  # closed meanwhile: its shutdown already ran or runs next, with the old stream
                raise SessionClosed("session is closed")
            melody = self.stream.melody
            self._shutdown()
            self._abandon_pending()
            self._planned_samples = self._next_index = 0
            self._start(seed, tokens, melody)
            # after the old stream's decodes (same priority, queued before): the new stream's audio starts afresh
            # (after the prompt's tokens, which are its decode's left context)
            return self._codec_call(lambda: self._reset_audio(tokens))

        self.runtime.lm_worker.call(swap).result().result()

    # -- any thread ---------------------------------------------------------------------------------------------
    def next_chunk(self, deadline: tp.Optional[float] = None) -> "Future[Chunk]":
        """The next chunk; `deadline` (time.monotonic) is when the listener runs out of audio without it."""
        future: Future[Chunk] = Future()
        with self._lock:
            problem = SessionClosed("session is closed") if self._closed else self.failure
            index = self._requested
            if problem is None:
                self._requested += 1
        if problem is not None:
            future.set_exception(problem)
            return future
        requested = time.perf_counter()
        job = self.runtime.lm_worker.call(lambda: self._request(future, index, requested, deadline))
        job.add_done_callback(lambda done: _pass_failure(future, done))
        return future

    def update(self, settings: SessionSettings) -> "Future[Landing]":
        """Applies new settings from the stream's next decode step: the chunk in the making changes inside it.
        The future gives where (engine.work.steering.Landing); it fails with SessionClosed, or RuntimeError when
        the decoder has no rows for more styles (the settings in force then stay). Validates on the caller's
        thread first (ValueError)."""
        self.runtime.check_settings(settings)
        if settings.model != self.settings.model:
            raise ValueError(f"model: a session plays one model from its start ({self.settings.model or 'base'}); "
                             f"open a new session for {settings.model or 'base'}")
        return self.runtime.lm_worker.call(lambda: self._apply("settings", settings))

    def set_melody(self, melody: tp.Optional[tuple[torch.Tensor, int]]) -> Landing:
        """Follows a new melody (wav [C, T], sample rate), or none, from the next decode step on; the context
        is kept (re-prefilled after the new chroma prefix). Blocks while the melody is analysed and applied."""
        prefix = None
        if melody is not None:
            prefix = run_in_pieces(self.runtime.codec_worker, self.runtime.melody_prefix_pieces(*melody),
                                   URGENT, label="session melody").result()
        elif not self.runtime.model.supports_melody:
            raise ValueError("this model cannot follow a melody (it has no chroma conditioner)")
        return self.runtime.lm_worker.call(lambda: self._apply("melody", prefix)).result()

    def expected_wait(self) -> float:
        """Seconds a chunk may now wait behind batch work the engine admitted (0: none runs): what a just-in-time
        consumer adds to its lead from the moment heavy work is admitted, before it delays a chunk."""
        return self._deadlines.wait_bound()

    def close(self) -> None:
        """Frees the session's rows and its slot; safe to call twice and from any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._deadlines.forget(self)
        self.runtime.lm_worker.call(self._shutdown).add_done_callback(lambda done: self._abandon_pending())
        self._on_close()

    # -- LM thread ----------------------------------------------------------------------------------------------
    def _start(self, seed: int, tokens: tp.Optional[torch.Tensor], prefix: tp.Optional[torch.Tensor]) -> None:
        stream = self.runtime.new_stream(self.settings.conditioning, self.settings.params, seed, prompt=tokens,
                                        melody=prefix, adapter=self.adapter)
        self._prompt_frames = 0
        if tokens is not None:
            stream.emitted_frames = self._prompt_frames = tokens.shape[-1]
        stream.on_frames = self._on_frames
        stream.on_failed = self._on_failed
        self.runtime.scheduler.add_stream(stream)
        self.stream = stream
        self._timeline = [(0, self.settings)]
        self._shrink = None

    def _apply(self, kind: str, value: tp.Any) -> Landing:
        """A change, between two decode steps: it applies from the next one. A failed session goes on only by a
        restart, which takes the settings (and melody) in force: the change is then heard from its chunk 0."""
        if self._closed or self.stream is None:
            raise SessionClosed("session is closed")
        live = self.stream.error is None  # still stepping (a failed decode restarts it, from these settings too)
        ramp = 0.0
        if kind == "melody" and live:
            self.runtime.scheduler.set_melody(self.stream, value)
        elif kind == "melody":
            self.stream.melody = value
        elif live:
            ramp = self._steer(value)
        else:
            self.settings = value
        frame = max(0, self.stream.absolute_complete - self._prompt_frames)  # a prompt: its frames complete first
        sample = max(0, frame - self._codec.lookahead_frames) * self.hop  # the first sample it can reach
        if kind == "settings" and live:
            self._timeline.append((sample, value))
        if not live or self.failure is not None:
            return Landing(chunk=0, offset_seconds=0.0, stream_seconds=0.0)
        pending = self._pending
        current = int(round(self.settings.chunk_seconds * self.sample_rate))
        return place(sample, self.sample_rate, self._planned_samples,
                     pending.index if pending else self._next_index, pending.samples if pending else current,
                     current, ramp)

    def _steer(self, update: SessionSettings) -> float:
        """New settings on the live stream from its next step; returns the glide's length (0: instant)."""
        scheduler, stream = self.runtime.scheduler, self.stream
        if (update.styles, update.weights) != (self.settings.styles, self.settings.weights):
            target = update.conditioning
            texts, start, end = union_blend(stream.conditioning.texts, stream.ramp.weights if stream.ramp
                                            else stream.conditioning.weights, target.texts, target.weights)
            steps = int(round(update.ramp_seconds * self.runtime.model.frame_rate))
            if steps > 0 and len(texts) <= self.runtime.config.max_styles:
                scheduler.set_conditioning(stream, Conditioning(texts, end))
                stream.ramp = Ramp(start, end, steps)
                self._shrink = texts
            else:
                stream.ramp, self._shrink = None, None
                scheduler.set_conditioning(stream, target)
        stream.params = update.params
        self.settings = update
        return update.ramp_seconds if stream.ramp else 0.0

    def _end_glide(self, stream: Stream) -> None:
        """A finished glide gives back the rows of the styles it left (each kept row keeps its context)."""
        texts, weights = stream.conditioning.texts, stream.conditioning.weights
        keep = kept_rows(texts, weights)
        self._shrink = None
        if len(keep) < len(texts):
            try:
                self.runtime.scheduler.set_conditioning(
                    stream, Conditioning([texts[i] for i in keep], [weights[i] for i in keep]), sources=keep)
            except Exception:  # a failed copy (out of memory) changes nothing: the zero-weight rows play on
                logger.exception("could not give back the rows a style glide left")

    def _request(self, future: Future, index: int, requested: float, deadline: tp.Optional[float]) -> None:
        if self._closed or self.stream is None:
            raise SessionClosed("session is closed")
        if self.stream.error is not None:
            raise self.stream.error
        if self._pending is not None:
            raise RuntimeError("a chunk is already being generated for this session")
        samples = int(round(self.settings.chunk_seconds * self.sample_rate))
        self._pending = _Request(future, index, requested, samples, deadline)
        self._next_index = index + 1
        needed = self._planned_samples + samples + self._overlap
        self.stream.wanted_frames = self._prompt_frames + math.ceil(needed / self.hop) + self._codec.lookahead_frames
        if deadline is None:
            self._deadlines.forget(self)
        else:
            self._deadlines.expect(self, deadline, self._steps_left, self._decode_estimate(), asked=True)
        self._on_frames(self.stream)

    def _steps_left(self) -> int:
        """Decode steps the next chunk still needs (any thread: a snapshot): what is left of the one in the making,
        else a whole chunk's."""
        stream, pending = self.stream, self._pending
        if stream is None:
            return 0
        if pending is not None:
            return stream.remaining_steps
        return math.ceil(self.settings.chunk_seconds * self.sample_rate / self.hop)

    def _decode_estimate(self) -> float:
        times = list(self._decode_times)
        return max(times) if times else PRIOR_SECONDS

    def _codec_call(self, fn: tp.Callable[[], tp.Any], due: tp.Optional[float] = None) -> Future:
        """A job of this session on the codec thread (its decoder's state: a prompt skipped, a chunk decoded, a
        restart), ordered by `due` among other sessions' (now, without one) but never before its own earlier ones."""
        with self._key_lock:
            self._codec_key = key = max(self._codec_key, time.monotonic() if due is None else due)
        return self.runtime.codec_worker.call(fn, priority=URGENT, due=key)

    def _on_frames(self, stream: Stream) -> None:
        if self._shrink is not None and stream.ramp is None:
            self._end_glide(stream)
        if self._pending is None or stream.wants_steps():
            return
        request, self._pending = self._pending, None
        frames = stream.take_frames()
        start = self._planned_samples
        self._planned_samples += request.samples
        settings, changes = self._settings_within(start, start + request.samples)
        job = self._codec_call(lambda: self._decode(request, frames, start, settings, changes), due=request.due)
        job.add_done_callback(lambda done: self._decoded(request, done))

    def _settings_within(self, start: int, end: int
                         ) -> tuple[SessionSettings, tuple[tuple[float, SessionSettings], ...]]:
        """The settings in force at sample `start` and those that begin in [start, end); forgets what is past."""
        before = [entry for entry in self._timeline if entry[0] <= start]
        inside = tuple(((entry[0] - start) / self.sample_rate, entry[1]) for entry in self._timeline
                       if start < entry[0] < end)
        self._timeline = [before[-1]] + [entry for entry in self._timeline if entry[0] > start]
        return before[-1][1], inside

    def _on_failed(self, stream: Stream, error: BaseException) -> None:
        self._deadlines.forget(self)
        self.failure = error
        if self._pending is not None and not self._pending.future.done():
            self._pending.future.set_exception(error)
        self._pending = None

    def _shutdown(self) -> None:
        self._deadlines.forget(self)
        if self.stream is not None:
            self.runtime.scheduler.remove_stream(self.stream)

    def _abandon_pending(self) -> None:
        request, self._pending = self._pending, None
        if request is not None and not request.future.done():
            request.future.set_exception(SessionClosed("session closed"))

    # -- codec thread -------------------------------------------------------------------------------------------
    def _reset_audio(self, prompt: tp.Optional[torch.Tensor] = None) -> None:
        """A restarted stream: no left context from the old one (only its own prompt's, if any), and the old
        stream's failure is history (a failing decode of it ran before this)."""
        self._codec = StreamingCodecDecoder(self.runtime.model.musicgen.compression_model)
        if prompt is not None:
            self._codec.skip(prompt)
        self._audio = torch.zeros(self.channels, 0)
        self._audio_start = 0
        self.failure = None

    def _skip(self, tokens: torch.Tensor) -> torch.Tensor:
        self._codec.skip(tokens)
        return tokens

    def _decode(self, request: _Request, frames: torch.Tensor, start: int, settings: SessionSettings,
                changes: tuple[tuple[float, SessionSettings], ...]) -> Chunk:
        began = time.perf_counter()
        self._audio = torch.cat([self._audio, self._codec.push(frames)], dim=-1)
        offset = start - self._audio_start
        audio = self._audio[:, offset: offset + request.samples + self._overlap].clone()
        if audio.shape[-1] < request.samples + self._overlap:
            raise RuntimeError(f"codec gave {audio.shape[-1]} samples for a chunk of "
                               f"{request.samples + self._overlap}")
        self._audio = self._audio[:, offset + request.samples:]
        self._audio_start = start + request.samples
        self._decode_times.append(time.perf_counter() - began)
        return Chunk(index=request.index, audio=audio, sample_rate=self.sample_rate,
                     seconds=request.samples / self.sample_rate, overlap_seconds=self._overlap / self.sample_rate,
                     generation_seconds=time.perf_counter() - request.requested, frames=frames,
                     settings=settings, changes=changes, start_seconds=start / self.sample_rate)

    def _decoded(self, request: _Request, done: Future) -> None:
        if done.exception() is not None:  # the audio stream has a hole now: this session cannot go on
            self.failure = done.exception()
            self._deadlines.forget(self)
            logger.warning("session decode failed: %s", done.exception())
        elif request.due is not None and not self._closed:  # before the chunk goes out: it may be asked for at once
            self._deadlines.expect(self, request.due + request.samples / self.sample_rate, self._steps_left,
                                   self._decode_estimate(), asked=False)
        if not request.future.done():
            if done.exception() is not None:
                request.future.set_exception(done.exception())
            else:
                request.future.set_result(done.result())
