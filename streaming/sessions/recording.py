"""Every session's recording: its tokens, seed and settings timeline, kept while it plays and for a while after.

A session's tokens are tiny (K codebooks at the model's frame rate: 4 x 50 int16 values a second, 1.4 MB an hour),
so they are kept instead of audio, and decoded afresh on request (streaming.sessions.recording_http), with MultiBand
Diffusion too. A restart (a generation failure, Lyria's reset) begins a new segment: a fresh context on a new seed.

Bounds (ServerConfig): a recording takes at most `recording_minutes` of audio; past that it stops growing (the
metadata says `truncated`) while the session plays on. Ended recordings are kept for `recording_keep_seconds`,
at most `max_recordings` of them (the oldest dropped first), beside those of sessions still live (at most one per
engine slot). Memory: at most (max_recordings + sessions) x K x frame_rate x 60 x recording_minutes x 2 bytes of
tokens (64 recordings of 60 minutes, K = 4: about 100 MB), plus at most MAX_TIMELINE entries each.
"""

import time
import typing as tp
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

MAX_TIMELINE = 10_000  # settings changes and events kept per recording; later ones are counted, not kept


@dataclass
class Segment:
    """One context of a session: the tokens of its chunks and the samples the client got from them."""

    seed: int
    first_chunk: int
    tokens: list[torch.Tensor] = field(default_factory=list)  # int16 [K, n] pieces, in order
    samples: int = 0  # new audio samples of its chunks (each chunk's overlap is the next one's start)
    frames: int = 0

    def token_tensor(self) -> torch.Tensor:
        return torch.cat(self.tokens, dim=-1) if self.tokens else torch.zeros(0, 0, dtype=torch.int16)


def describe_settings(settings) -> dict:
    """A SessionSettings as the timeline shows it."""
    return {"styles": list(settings.styles), "style_weights": list(settings.weights),
            "temperature": settings.params.temperature, "top_k": settings.params.top_k,
            "top_p": settings.params.top_p, "guidance_weight": settings.params.guidance,
            "chunk_seconds": settings.chunk_seconds, "style_ramp_seconds": settings.ramp_seconds}


class Recording:
    """One session's recording. Written on the sidecar's event loop as chunks arrive, read by downloads."""

    def __init__(self, session_id: str, kind: str, seed: int, sample_rate: int, channels: int, frame_rate: float,
                 max_frames: int) -> None:
        self.session_id = session_id
        self.kind = kind
        self.sample_rate = sample_rate
        self.channels = channels
        self.frame_rate = frame_rate
        self.max_frames = max_frames
        self.started_at = time.time()
        self._started = time.monotonic()
        self.ended_at: tp.Optional[float] = None
        self.segments: list[Segment] = [Segment(seed=seed, first_chunk=0)]
        self.timeline: list[dict] = []
        self.timeline_dropped = 0
        self.chunks = 0
        self.truncated = False
        self._settings = None

    @property
    def frames(self) -> int:
        return sum(segment.frames for segment in self.segments)

    @property
    def samples(self) -> int:
        return sum(segment.samples for segment in self.segments)

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    def add(self, chunk) -> None:
        """A chunk the session generated (engine.work.chunk.Chunk): its tokens and, when they changed, its settings."""
        for offset, settings in ((0.0, chunk.settings), *chunk.changes):  # the settings at its start, then within
            if settings != self._settings:
                self._settings = settings
                self.note("settings", chunk=chunk.index, offset_seconds=round(offset, 4),
                          **describe_settings(settings))
        frames = chunk.frames
        if self.frames + frames.shape[-1] > self.max_frames:
            self.truncated = True
            return
        segment = self.segments[-1]
        segment.tokens.append(frames.detach().to("cpu", torch.int16))
        segment.frames += frames.shape[-1]
        segment.samples += int(round(chunk.seconds * self.sample_rate))  # bar chunks come at their own rate
        self.chunks += 1

    def restarted(self, seed: int) -> None:
        """The session goes on with a fresh context on `seed`: a new segment, its chunks counted from 0."""
        self.note("restart", seed=seed)
        if self.segments[-1].frames == 0:
            self.segments[-1] = Segment(seed=seed, first_chunk=self.chunks)
        else:
            self.segments.append(Segment(seed=seed, first_chunk=self.chunks))
        self._settings = None  # the next chunk states the settings it starts with

    def note(self, event: str, **fields: tp.Any) -> None:
        """A timeline entry at the current time and position (e.g. a melody set or dropped)."""
        if len(self.timeline) >= MAX_TIMELINE:
            self.timeline_dropped += 1
            return
        self.timeline.append({"event": event, "time": round(time.monotonic() - self._started, 3),
                              "audio_seconds": round(self.seconds, 3), **fields})

    def end(self) -> None:
        if self.ended_at is None:
            self.ended_at = time.time()

    def describe(self) -> dict:
        return {"session_id": self.session_id, "kind": self.kind, "started_at": self.started_at,
                "ended_at": self.ended_at, "live": self.ended_at is None, "seconds": round(self.seconds, 3),
                "chunks": self.chunks, "sample_rate": self.sample_rate, "channels": self.channels,
                "segments": [{"seed": s.seed, "first_chunk": s.first_chunk, "seconds": s.samples / self.sample_rate}
                             for s in self.segments],
                "truncated": self.truncated, "max_seconds": self.max_frames / self.frame_rate,
                "timeline": self.timeline, "timeline_dropped": self.timeline_dropped}


class RecordingStore:
    """The recordings of live sessions and of those that ended less than `keep_seconds` ago (at most `keep` of
    those). Event loop thread only."""

    def __init__(self, max_minutes: float, keep_seconds: float, keep: int) -> None:
        self.max_minutes = max_minutes
        self.keep_seconds = keep_seconds
        self.keep = keep
        self._recordings: OrderedDict[str, Recording] = OrderedDict()

    def start(self, session_id: str, kind: str, seed: int, model: dict) -> Recording:
        """A new recording, or the one of `session_id` going on (a Lyria connection's next session: a new
        segment, on `seed`)."""
        recording = self._recordings.get(session_id)
        if recording is not None:
            recording.ended_at = None
            recording.restarted(seed)
            return recording
        recording = Recording(session_id, kind, seed, sample_rate=model["sample_rate"], channels=model["channels"],
                              frame_rate=model["frame_rate"],
                              max_frames=int(self.max_minutes * 60 * model["frame_rate"]))
        self._recordings[session_id] = recording
        self._reap()
        return recording

    def ended(self, recording: Recording) -> None:
        recording.end()
        self._reap()

    def get(self, session_id: str) -> tp.Optional[Recording]:
        self._reap()
        return self._recordings.get(session_id)

    def _reap(self) -> None:
        now = time.time()
        ended = [r for r in self._recordings.values() if r.ended_at is not None]
        for recording in ended:
            if now - recording.ended_at > self.keep_seconds:
                del self._recordings[recording.session_id]
        ended = sorted((r for r in self._recordings.values() if r.ended_at is not None), key=lambda r: r.ended_at)
        for recording in ended[:max(len(ended) - self.keep, 0)]:
            del self._recordings[recording.session_id]
