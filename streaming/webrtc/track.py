"""The audio track a WebRTC peer receives: a live jam session as Opus packets, 20 ms each, paced by timestamp.

The track returns pre-encoded `av.Packet`s (aiortc's path for encoded media) rather than `av.AudioFrame`s, because
aiortc's own Opus encoder is fixed to libopus's "voip" mode at 96 kbps; ours is the music mode at a stated bitrate
(`streaming.formats.OpusEncoder`). Playback never waits on generation: when the buffer runs dry the track carries
silence and tells its owner, so the connection neither stalls nor tears down.
"""

import asyncio
import fractions
import logging
import time
import typing as tp

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streaming.formats import OPUS_FRAME_SAMPLES, OPUS_SAMPLE_RATE, OpusEncoder
from streaming.sessions.lead import Lead

logger = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, OPUS_SAMPLE_RATE)
CHANNELS = 2


class SessionTrack(MediaStreamTrack):
    """A bounded PCM buffer (48 kHz stereo int16) drained one frame per 20 ms of the track's clock.

    The clock starts with the first audio, so the listener hears the first chunk at once instead of silence
    first. `wait_for_room(low_water_seconds)` tells the producer when the buffer is down to the mark (the stream's
    lead, `TrackPace`): it then requests the next chunk, which keeps the buffer within about two chunks.
    """

    kind = "audio"

    def __init__(self, encoder: OpusEncoder, on_underrun: tp.Callable[[int], None],
                 on_recovered: tp.Callable[[float], None]) -> None:
        super().__init__()
        self.encoder = encoder
        self.on_underrun = on_underrun
        self.on_recovered = on_recovered
        self.low_water_seconds = 0.0
        self.underruns = 0  # times the buffer ran dry while playing
        self.frames = 0
        self.encode_cpu_seconds = 0.0  # CPU time spent in the Opus encoder (thread time)
        self.first_frame_at: tp.Optional[float] = None  # time.monotonic() when the first frame was released
        self._pcm = np.zeros((0, CHANNELS), dtype="<i2")
        self._starved_since: tp.Optional[int] = None  # the pts at which silence began
        self._start: tp.Optional[float] = None
        self._pts = 0
        self._has_audio = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    @property
    def buffered_seconds(self) -> float:
        return self._pcm.shape[0] / OPUS_SAMPLE_RATE

    @property
    def played_seconds(self) -> float:
        return self._pts / OPUS_SAMPLE_RATE if self._start is not None else 0.0

    def push(self, pcm: np.ndarray) -> None:
        """Appends int16 [samples, 2] audio; the producer asks for more once the buffer is down to the mark."""
        self._pcm = np.concatenate([self._pcm, pcm]) if self._pcm.size else pcm
        if self.buffered_seconds > self.low_water_seconds:
            self._room.clear()
        self._has_audio.set()
        if self._starved_since is not None:
            silence = (self._pts - self._starved_since) / OPUS_SAMPLE_RATE
            self._starved_since = None
            self.on_recovered(silence)

    async def wait_for_room(self, low_water_seconds: float) -> None:
        self.low_water_seconds = low_water_seconds
        while self.buffered_seconds > self.low_water_seconds:
            self._room.clear()
            await self._room.wait()

    def stop(self) -> None:
        super().stop()
        self._has_audio.set()  # wakes a recv() still waiting for the first audio, which then ends

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            await self._has_audio.wait()
            if self.readyState != "live":
                raise MediaStreamError
            self._start = loop.time()
            self.first_frame_at = time.monotonic()
        else:
            self._pts += OPUS_FRAME_SAMPLES
            delay = self._start + self._pts / OPUS_SAMPLE_RATE - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        pcm = self._take()
        data = await loop.run_in_executor(None, self._encode, pcm)
        packet = av.Packet(data)
        packet.pts = self._pts
        packet.time_base = TIME_BASE
        return packet

    def _take(self) -> np.ndarray:
        """The next frame from the buffer, padded with silence when generation is behind."""
        frame = self._pcm[:OPUS_FRAME_SAMPLES]
        self._pcm = self._pcm[OPUS_FRAME_SAMPLES:]
        if frame.shape[0] < OPUS_FRAME_SAMPLES:
            frame = np.concatenate([frame, np.zeros((OPUS_FRAME_SAMPLES - frame.shape[0], CHANNELS), "<i2")])
            if self._starved_since is None:
                self._starved_since = self._pts
                self.underruns += 1
                self.on_underrun(self.underruns)
        if self.buffered_seconds <= self.low_water_seconds:
            self._room.set()
        return frame

    def _encode(self, pcm: np.ndarray) -> bytes:
        started = time.thread_time()
        data = self.encoder.encode(pcm)
        self.encode_cpu_seconds += time.thread_time() - started
        self.frames += 1
        return data


class TrackPace:
    """A WebRTC peer's pace (streaming.sessions.pump.Pace): the track is the listener's clock. The next chunk is
    asked for when the track holds no more than the stream's lead (the low-water mark), with the moment the track
    runs dry as its deadline; the track itself plays silence through an underrun and counts it."""

    just_in_time = True
    lead: Lead  # the stream's, set by ChunkPump.bind before the first request

    def __init__(self, track: SessionTrack) -> None:
        self.track = track

    async def before_request(self) -> float:
        await self.track.wait_for_room(self.lead.seconds)
        return time.monotonic() + self.track.buffered_seconds

    async def before_send(self, chunk) -> None:
        """A chunk goes into the track as soon as it is ready."""

    def sent(self, chunk) -> None:
        """The track keeps its own clock."""
