"""The player's microphone: the audio track of a send-receive offer (FastRTC's `send-receive` mode), into the session.

FastRTC's send-receive client adds its microphone as a `sendrecv` audio transceiver; the peer answers it with its own
`sendrecv` transceiver (its music out, the player in) and `TrackListener` reads the remote track. Its 20 ms frames
are gathered into `BLOCK_SECONDS` pieces and handed to `LiveSession.play_input` (engine.work.live_input mixes them
into the context before the next chunk). Placement: the player hears the track's audio while they play, so the first
piece is placed where the track is playing now (the session timeline pushed into it, less what it still buffers, less
the piece's own length: the network and the browser's jitter buffer are not counted); the pieces after it follow on
without a gap (the engine's cursor), and the listener places one again (`REANCHOR_SECONDS`) when the two drift apart
(a restarted stream, an underrun that held the track, a pause in the input). The peer tells the client where input
landed (`{"event": "input", "start_seconds": ...}` on the data channel) and warns, at most every `WARN_EVERY_SECONDS`,
when the engine dropped some (faster than real time, too much waiting).
"""

import logging
import time
import typing as tp

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

if tp.TYPE_CHECKING:
    from engine.api import LiveSession

logger = logging.getLogger(__name__)

BLOCK_SECONDS = 0.1  # 5 of FastRTC's 20 ms frames per play_input
REANCHOR_SECONDS = 1.0
WARN_EVERY_SECONDS = 5.0


def frame_samples(frame: tp.Any) -> np.ndarray:
    """An av.AudioFrame (aiortc's decoded Opus: packed s16, 48 kHz, stereo; any format PyAV gives) as float32
    [channels, n] in [-1, 1]."""
    array = frame.to_ndarray()
    channels = len(frame.layout.channels)
    samples = array if frame.format.is_planar else array.reshape(-1, channels).T
    if np.issubdtype(samples.dtype, np.integer):
        return samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)
    return samples.astype(np.float32)


class TrackListener:
    """Reads one remote audio track until it ends, handing its audio to the peer's session in pieces."""

    def __init__(self, track: MediaStreamTrack, session: tp.Callable[[], tp.Optional["LiveSession"]],
                 playing_at: tp.Callable[[], float], tell: tp.Callable[[dict], None],
                 warn: tp.Callable[[str], None]) -> None:
        self.track = track
        self.session = session  # the peer's session now (None: none plays; the audio is dropped)
        self.playing_at = playing_at  # seconds on the session's timeline the track plays now
        self.tell = tell
        self.warn = warn
        self.pieces = self.dropped = 0
        self._anchor = True  # place the next piece where the track plays
        self._warned = -float("inf")

    async def run(self) -> None:
        block: list[np.ndarray] = []
        rate = None
        while True:
            try:
                frame = await self.track.recv()
            except MediaStreamError:  # the client stopped sending (or the connection closed)
                return
            samples = frame_samples(frame)
            if rate is not None and (frame.sample_rate != rate or samples.shape[0] != block[0].shape[0]):
                block = []  # the format changed mid-stream: start a fresh piece
            rate = frame.sample_rate
            block.append(samples)
            if sum(b.shape[-1] for b in block) >= BLOCK_SECONDS * rate:
                self.feed(np.concatenate(block, axis=-1), rate)
                block = []

    def feed(self, samples: np.ndarray, rate: int) -> None:
        """One piece to the session (validation only: the engine resamples when it mixes it in, off this loop)."""
        session = self.session()
        if session is None:
            self._anchor = True
            return
        seconds = samples.shape[-1] / rate
        now = max(0.0, self.playing_at() - seconds)
        try:
            receipt = session.play_input(samples, rate, now if self._anchor else None)
        except (ValueError, RuntimeError) as exc:  # SessionClosed too: the peer is ending
            logger.debug("webrtc input not taken: %s", exc)
            self._anchor = True
            return
        if receipt.dropped is not None:
            self.dropped += 1
            self._anchor = True
            if time.monotonic() - self._warned >= WARN_EVERY_SECONDS:
                self._warned = time.monotonic()
                self.warn(f"microphone input dropped: {receipt.dropped}")
            return
        self.pieces += 1
        if self._anchor:
            self.tell({"event": "input", "start_seconds": round(receipt.start_seconds, 4), "sample_rate": rate,
                       "channels": int(samples.shape[0])})
        self._anchor = abs(receipt.start_seconds - now) > REANCHOR_SECONDS
