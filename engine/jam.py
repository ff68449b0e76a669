"""Jam sessions: endless music in chunks, steered live, on the shared engine.

A session is a stream the scheduler steps only while a chunk is wanted. Each chunk carries `overlap_seconds` of
audio past its end that is identical to the start of the next chunk, so a client that crossfades over the
overlap (as the seed's browser client does) plays a seamless stream. Updates queue and apply at the next chunk
boundary; the context is kept, so the music turns rather than restarts.
"""

import logging
import math
import threading
import time
import typing as tp
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from engine.codec_stream import StreamingCodecDecoder
from engine.streams import Conditioning, SamplingParams, Stream, normalized_weights

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

    def __post_init__(self) -> None:
        if not self.styles or any(not s.strip() for s in self.styles):
            raise ValueError("styles must name at least one non-empty style")
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


class JamSession:
    """Create with `JamSession.open(engine, settings, seed)`; call `next_chunk()` from any thread."""

    def __init__(self, engine, settings: JamSettings, seed: int, overlap_seconds: float = 0.025) -> None:
        self.engine = engine
        self.settings = settings
        self.seed = seed
        self.overlap_seconds = overlap_seconds
        model = engine.model
        self.sample_rate = model.sample_rate
        self.hop = int(round(model.sample_rate / model.frame_rate))
        self.codec = StreamingCodecDecoder(model.musicgen.compression_model)
        self.stream: Stream | None = None
        self._pending: tp.Optional[tuple[Future, float, int]] = None  # future, request time, samples needed
        self._update: JamSettings | None = None
        self._audio = torch.zeros(model.channels, 0)  # decoded audio not yet sent past the previous chunk start
        self._frames: list[torch.Tensor] = []
        self._chunks = 0
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def open(cls, engine, settings: JamSettings, seed: int, prompt: tp.Optional[tuple[torch.Tensor, int]] = None,
             overlap_seconds: float = 0.025) -> "JamSession":
        """Starts a session, optionally continuing an audio prompt (wav [C, T], sample rate). Blocks until the
        engine accepted it; raises RuntimeError when the engine has no room."""
        if not engine.step_decoder_supported:
            raise RuntimeError("this model cannot stream (see the engine log)")
        session = cls(engine, settings, seed, overlap_seconds)

        def start() -> None:
            tokens = engine.encode(*prompt) if prompt is not None else None
            stream = engine.new_stream(settings.conditioning, settings.params, seed, prompt=tokens)
            if tokens is not None:  # the prompt is context, not output
                stream.emitted_frames = tokens.shape[-1]
                session.codec.skip(tokens)
            stream.on_frames = session._on_frames
            engine.scheduler.add_stream(stream)
            session.stream = stream

        engine.scheduler.call(start).result()
        return session

    # -- any thread ---------------------------------------------------------------------------------------------
    def next_chunk(self) -> "Future[Chunk]":
        future: Future[Chunk] = Future()
        if self._closed:
            future.set_exception(SessionClosed("session is closed"))
            return future
        requested = time.perf_counter()
        self.engine.scheduler.call(lambda: self._request(future, requested))
        return future

    def update(self, settings: JamSettings) -> None:
        """Applies from the next chunk on (settings are validated by JamSettings already)."""
        with self._lock:
            self._update = settings

    def close(self) -> None:
        """Frees the session's rows; safe to call twice and from any thread."""
        if self._closed:
            return
        self._closed = True
        self.engine.scheduler.call(self._shutdown)

    # -- engine thread ------------------------------------------------------------------------------------------
    def _request(self, future: Future, requested: float) -> None:
        if self._closed or self.stream is None:
            future.set_exception(SessionClosed("session is closed"))
            return
        if self._pending is not None:
            future.set_exception(RuntimeError("a chunk is already being generated for this session"))
            return
        with self._lock:
            update, self._update = self._update, None
        if update is not None:
            if update.styles != self.settings.styles or update.weights != self.settings.weights:
                self.engine.scheduler.set_conditioning(self.stream, update.conditioning)
            self.stream.params = update.params
            self.settings = update
        chunk = int(round(self.settings.chunk_seconds * self.sample_rate))
        overlap = int(round(self.overlap_seconds * self.sample_rate))
        needed = chunk + overlap
        self._pending = (future, requested, chunk)
        missing = needed - self._audio.shape[-1]
        frames_needed = math.ceil(max(0, missing) / self.hop) + self.codec.lookahead_frames
        self.stream.wanted_frames = self.codec.emitted_frames + frames_needed
        self._on_frames(self.stream)

    def _on_frames(self, stream: Stream) -> None:
        if self._pending is None:
            return
        future, requested, chunk = self._pending
        if stream.error is not None:
            self._pending = None
            if not future.done():
                future.set_exception(stream.error)
            return
        if stream.wants_steps():
            return
        frames = stream.take_frames()
        self._frames.append(frames)
        self._audio = torch.cat([self._audio, self.codec.push(frames)], dim=-1)
        overlap = int(round(self.overlap_seconds * self.sample_rate))
        if self._audio.shape[-1] < chunk + overlap:
            stream.wanted_frames += math.ceil((chunk + overlap - self._audio.shape[-1]) / self.hop)
            return
        audio = self._audio[:, : chunk + overlap].clone()
        self._audio = self._audio[:, chunk:]
        result = Chunk(index=self._chunks, audio=audio, sample_rate=self.sample_rate,
                       seconds=chunk / self.sample_rate, overlap_seconds=overlap / self.sample_rate,
                       generation_seconds=time.perf_counter() - requested, frames=torch.cat(self._frames, -1),
                       settings=self.settings)
        self._frames = []
        self._chunks += 1
        self._pending = None
        if not future.done():  # a caller may have cancelled while waiting
            future.set_result(result)

    def _shutdown(self) -> None:
        if self.stream is not None:
            self.engine.scheduler.remove_stream(self.stream)
        if self._pending is not None and not self._pending[0].done():
            self._pending[0].set_exception(SessionClosed("session closed"))
        self._pending = None

