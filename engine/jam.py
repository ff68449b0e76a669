"""Jam sessions: endless music in chunks, steered live, on the shared engine.

A session is a stream the LM thread steps only while a chunk is wanted; the chunk's tokens then go to the codec
thread, which decodes them while the LM thread goes on with other work. Each chunk carries `overlap_seconds` of
audio past its end that is identical to the start of the next chunk, so a client that crossfades over the overlap
(as the seed's browser client does) plays a seamless stream. Updates apply at a chunk boundary the caller is told
of; the context is kept, so the music turns rather than restarts.
"""

import logging
import math
import threading
import time
import typing as tp
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from engine.codec_stream import StreamingCodecDecoder
from engine.config import MAX_PROMPT_CHARS, MAX_STYLES
from engine.streams import Conditioning, SamplingParams, Stream, normalized_weights
from engine.worker import URGENT, run_in_pieces

logger = logging.getLogger(__name__)


class SessionClosed(RuntimeError):
    pass


@dataclass(frozen=True)
class JamSettings:
    """Everything a client can steer. Validated on construction, so a bad update never reaches the stream."""

    styles: tuple[str, ...]
    weights: tuple[float, ...]
    params: SamplingParams = SamplingParams(temperature=1.1, top_k=40, guidance=3.0)
    chunk_seconds: float = 2.0
    # what the caller made these settings from (e.g. Lyria's prompts and config), handed back on every chunk
    # generated with them; the engine never reads it, and it takes no part in comparisons
    source: tp.Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.styles or any(not s.strip() for s in self.styles):
            raise ValueError("styles must name at least one non-empty style")
        if len(self.styles) > MAX_STYLES:
            raise ValueError(f"{len(self.styles)} styles given; at most {MAX_STYLES} can be blended")
        if any(len(s) > MAX_PROMPT_CHARS for s in self.styles):
            raise ValueError(f"a style is longer than {MAX_PROMPT_CHARS} characters")
        if len(self.weights) != len(self.styles):
            raise ValueError(f"{len(self.weights)} style weights for {len(self.styles)} styles")
        normalized_weights(self.weights)
        self.params.validate()
        if not 0 < self.chunk_seconds <= 10:
            raise ValueError("chunk length must be within (0, 10] seconds")

    @property
    def conditioning(self) -> Conditioning:
        return Conditioning(list(self.styles), normalized_weights(self.weights))


@dataclass(frozen=True)
class Chunk:
    index: int
    audio: torch.Tensor  # [channels, samples]: `seconds` of new audio then `overlap_seconds` shared with the next
    sample_rate: int
    seconds: float
    overlap_seconds: float
    generation_seconds: float  # from the request to the chunk being ready
    frames: torch.Tensor  # [K, n] tokens that completed while this chunk was produced
    settings: JamSettings

    @property
    def real_time_factor(self) -> float:
        """Wall seconds per second of audio: below 1 is faster than real time."""
        return self.generation_seconds / self.seconds


@dataclass
class _Request:
    future: "Future[Chunk]"
    index: int
    requested: float
    samples: int  # new samples in this chunk (the overlap comes on top)
    settings: JamSettings


def _pass_failure(target: Future, source: Future) -> None:
    if source.exception() is not None and not target.done():
        target.set_exception(source.exception())


class JamSession:
    """Opened by `Engine.open_session`; `next_chunk()`, `update()` and `close()` may be called from any thread."""

    def __init__(self, engine, settings: JamSettings, seed: int, on_close: tp.Callable[[], None],
                 overlap_seconds: float = 0.025) -> None:
        self.engine = engine
        self.settings = settings
        self.overlap_seconds = overlap_seconds
        model = engine.model
        self.sample_rate = model.sample_rate
        self.channels = model.channels
        self.hop = int(round(model.sample_rate / model.frame_rate))
        self._overlap = int(round(overlap_seconds * self.sample_rate))
        self._on_close = on_close
        self._lock = threading.Lock()
        self._closed = False
        self._requested = 0  # chunks asked for so far (caller threads, under the lock)
        # changes waiting for their chunk, under the lock: (first chunk index, "settings" | "melody", value)
        self._changes: list[tuple[int, str, tp.Any]] = []
        self.failure: tp.Optional[BaseException] = None
        # LM thread
        self.stream: tp.Optional[Stream] = None
        self._pending: tp.Optional[_Request] = None
        self._planned_samples = 0  # audio samples given to earlier chunks (their new part)
        self._prompt_frames = 0
        # codec thread
        self._codec = StreamingCodecDecoder(model.musicgen.compression_model)
        self._audio = torch.zeros(model.channels, 0)  # decoded audio from sample `_audio_start` on
        self._audio_start = 0

    @classmethod
    def open(cls, engine, settings: JamSettings, seed: int, on_close: tp.Callable[[], None],
             prompt: tp.Optional[tuple[torch.Tensor, int]] = None,
             melody: tp.Optional[tuple[torch.Tensor, int]] = None) -> "JamSession":
        """Starts a session, optionally continuing an audio prompt and following a melody (each wav [C, T] with
        its sample rate). Blocks until the engine has accepted it."""
        session = cls(engine, settings, seed, on_close)
        tokens = prefix = None
        if melody is not None:
            prefix = run_in_pieces(engine.codec_worker, engine.melody_prefix_pieces(*melody), URGENT).result()
        if prompt is not None:  # the prompt is context, not output: the codec skips it
            tokens = engine.codec_worker.call(lambda: session._skip(engine.encode_now(*prompt))).result()
        engine.lm_worker.call(lambda: session._start(seed, tokens, prefix)).result()
        return session

    def restart(self, seed: int) -> None:
        """Goes on with a fresh context (a new stream on `seed`) on the slot this session holds, so that a
        restart never competes for a slot: built from the latest settings and melody, those not yet applied
        included; chunks count from 0 again. For a failed session (its failure is cleared) and for a client's
        reset alike. Blocks until the engine has swapped the stream; SessionClosed if the session closed."""
        self._restart(seed, None)

    def restart_from(self, seed: int, prompt: tuple[torch.Tensor, int]) -> None:
        """`restart`, but the fresh stream continues the audio `prompt` (wav [C, T], rate) as its context, as `open`
        with a prompt does: a bar session's reseed, whose new context ends on a bar line. Blocks likewise."""
        tokens = self.engine.codec_worker.call(lambda: self.engine.encode_now(*prompt), priority=URGENT).result()
        self._restart(seed, tokens)

    def _restart(self, seed: int, tokens: tp.Optional[torch.Tensor]) -> None:
        with self._lock:
            if self._closed:
                raise SessionClosed("session is closed")
            due = {kind: value for _, kind, value in self._changes}  # the latest change of each kind
            self._changes = []
            self._requested = 0

        def swap() -> Future:
            if self._closed:  # closed meanwhile: its shutdown already ran or runs next, with the old stream
                raise SessionClosed("session is closed")
            melody = due["melody"] if "melody" in due else self.stream.melody
            self.settings = due.get("settings", self.settings)
            self._shutdown()
            self._abandon_pending()
            self._planned_samples = 0
            self._start(seed, tokens, melody)
            # after the old stream's decodes (same priority, queued before): the new stream's audio starts afresh
            # (after the prompt's tokens, which are its decode's left context)
            return self.engine.codec_worker.call(lambda: self._reset_audio(tokens), priority=URGENT)

        self.engine.lm_worker.call(swap).result().result()

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
        job = self.engine.lm_worker.call(lambda: self._request(future, index, requested, deadline))
        job.add_done_callback(lambda done: _pass_failure(future, done))
        return future

    def update(self, settings: JamSettings) -> int:
        """Queues new settings; returns the index of the first chunk generated with them (the next one not yet
        asked for: a chunk already in the making keeps the settings it started with)."""
        self.engine.check_settings(settings)
        return self._queue("settings", settings)

    def set_melody(self, melody: tp.Optional[tuple[torch.Tensor, int]]) -> int:
        """Follows a new melody (wav [C, T], sample rate), or none, from the returned chunk index on; the context
        is kept (re-prefilled after the new chroma prefix). Blocks while the melody is analysed."""
        prefix = None
        if melody is not None:
            prefix = run_in_pieces(self.engine.codec_worker, self.engine.melody_prefix_pieces(*melody),
                                   URGENT).result()
        elif not self.engine.model.supports_melody:
            raise ValueError("this model cannot follow a melody (it has no chroma conditioner)")
        return self._queue("melody", prefix)

    def _queue(self, kind: str, value: tp.Any) -> int:
        """Holds a change for the next chunk not yet asked for; returns that chunk's index."""
        with self._lock:
            # a failed session goes on only by a restart, whose chunks count from 0: a change waits for that one
            first = 0 if self.failure is not None else self._requested
            self._changes.append((first, kind, value))
        return first

    def close(self) -> None:
        """Frees the session's rows and its slot; safe to call twice and from any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.engine.lm_worker.call(self._shutdown).add_done_callback(lambda done: self._abandon_pending())
        self._on_close()

    # -- LM thread ----------------------------------------------------------------------------------------------
    def _start(self, seed: int, tokens: tp.Optional[torch.Tensor], prefix: tp.Optional[torch.Tensor]) -> None:
        stream = self.engine.new_stream(self.settings.conditioning, self.settings.params, seed, prompt=tokens,
                                        melody=prefix)
        self._prompt_frames = 0
        if tokens is not None:
            stream.emitted_frames = self._prompt_frames = tokens.shape[-1]
        stream.on_frames = self._on_frames
        stream.on_failed = self._on_failed
        self.engine.scheduler.add_stream(stream)
        self.stream = stream

    def _request(self, future: Future, index: int, requested: float, deadline: tp.Optional[float]) -> None:
        if self._closed or self.stream is None:
            raise SessionClosed("session is closed")
        if self.stream.error is not None:
            raise self.stream.error
        if self._pending is not None:
            raise RuntimeError("a chunk is already being generated for this session")
        with self._lock:  # the latest change of each kind that is due by this chunk
            due = {kind: value for first, kind, value in self._changes if first <= index}
            self._changes = [change for change in self._changes if change[0] > index]
        if "melody" in due:
            self.engine.scheduler.set_melody(self.stream, due["melody"])
        if "settings" in due:
            update = due["settings"]
            if update.styles != self.settings.styles or update.weights != self.settings.weights:
                self.engine.scheduler.set_conditioning(self.stream, update.conditioning)
            self.stream.params = update.params
            self.settings = update
        samples = int(round(self.settings.chunk_seconds * self.sample_rate))
        self._pending = _Request(future, index, requested, samples, self.settings)
        needed = self._planned_samples + samples + self._overlap
        self.stream.wanted_frames = self._prompt_frames + math.ceil(needed / self.hop) + self._codec.lookahead_frames
        self.stream.deadline = deadline
        self._on_frames(self.stream)

    def _on_frames(self, stream: Stream) -> None:
        if self._pending is None or stream.wants_steps():
            return
        request, self._pending = self._pending, None
        frames = stream.take_frames()
        start = self._planned_samples
        self._planned_samples += request.samples
        stream.deadline = None
        job = self.engine.codec_worker.call(lambda: self._decode(request, frames, start), priority=URGENT)
        job.add_done_callback(lambda done: self._decoded(request, done))

    def _on_failed(self, stream: Stream, error: BaseException) -> None:
        self.failure = error
        if self._pending is not None and not self._pending.future.done():
            self._pending.future.set_exception(error)
        self._pending = None

    def _shutdown(self) -> None:
        if self.stream is not None:
            self.engine.scheduler.remove_stream(self.stream)

    def _abandon_pending(self) -> None:
        request, self._pending = self._pending, None
        if request is not None and not request.future.done():
            request.future.set_exception(SessionClosed("session closed"))

    # -- codec thread -------------------------------------------------------------------------------------------
    def _reset_audio(self, prompt: tp.Optional[torch.Tensor] = None) -> None:
        """A restarted stream: no left context from the old one (only its own prompt's, if any), and the old
        stream's failure is history (a failing decode of it ran before this)."""
        self._codec = StreamingCodecDecoder(self.engine.model.musicgen.compression_model)
        if prompt is not None:
            self._codec.skip(prompt)
        self._audio = torch.zeros(self.channels, 0)
        self._audio_start = 0
        self.failure = None

    def _skip(self, tokens: torch.Tensor) -> torch.Tensor:
        self._codec.skip(tokens)
        return tokens

    def _decode(self, request: _Request, frames: torch.Tensor, start: int) -> Chunk:
        self._audio = torch.cat([self._audio, self._codec.push(frames)], dim=-1)
        offset = start - self._audio_start
        audio = self._audio[:, offset: offset + request.samples + self._overlap].clone()
        if audio.shape[-1] < request.samples + self._overlap:
            raise RuntimeError(f"codec gave {audio.shape[-1]} samples for a chunk of "
                               f"{request.samples + self._overlap}")
        self._audio = self._audio[:, offset + request.samples:]
        self._audio_start = start + request.samples
        return Chunk(index=request.index, audio=audio, sample_rate=self.sample_rate,
                     seconds=request.samples / self.sample_rate, overlap_seconds=self._overlap / self.sample_rate,
                     generation_seconds=time.perf_counter() - request.requested, frames=frames,
                     settings=request.settings)

    def _decoded(self, request: _Request, done: Future) -> None:
        if done.exception() is not None:  # the audio stream has a hole now: this session cannot go on
            self.failure = done.exception()
            logger.warning("session decode failed: %s", done.exception())
        if not request.future.done():
            if done.exception() is not None:
                request.future.set_exception(done.exception())
            else:
                request.future.set_result(done.result())
