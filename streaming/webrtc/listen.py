"""The player's microphone: the audio track of a send-receive offer (FastRTC's `send-receive` mode), into the session.

FastRTC's send-receive client adds its microphone as a `sendrecv` audio transceiver; the peer answers it with its own
`sendrecv` transceiver (its music out, the player in) and `TrackListener` reads the remote track. Its 20 ms frames
are gathered into `BLOCK_SECONDS` pieces and handed to `LiveSession.play_input` (engine.work.live_input mixes them
into the context before the next chunk). Placement: the player hears the track's audio while they play, so the first
piece is placed where the track is playing now (the session timeline pushed into it, less what it still buffers, less
the piece's own length: the network and the browser's jitter buffer are not counted); the pieces after it follow on
without a gap (the engine's cursor), and the listener places one again when the two drift apart (a restarted stream,
an underrun that held the track, a pause in the input): engine.api.InputClock, the rule FastRTC's WebSocket media
frames follow too. The peer tells the client where a piece placed afresh landed (`{"event": "input", "start_seconds":
...}` on the data channel) and warns, at most every 5 s with the count since (engine.api.DropTally), when the engine
dropped some (faster than real time, too much waiting).
"""

import logging
import time
import typing as tp

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from engine.api import DropTally, InputClock

if tp.TYPE_CHECKING:
    from engine.api import LiveSession

logger = logging.getLogger(__name__)

BLOCK_SECONDS = 0.1  # 5 of FastRTC's 20 ms frames per play_input


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
        self.clock = InputClock()
        self.drops = DropTally()

    async def run(self) -> None:
        block: list[np.ndarray] = []
        rate = None
        while True:
            try:
                frame = await self.track.recv()
            except MediaStreamError:  # the client stopped sending (or the connection closed)
                return
            samples = frame_samples(frame)
            if block and (frame.sample_rate != rate or samples.shape[0] != block[0].shape[0]):
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
            self.clock.landed(None)
            return
        at = self.clock.place(self.playing_at(), samples.shape[-1] / rate)
        try:
            receipt = session.play_input(samples, rate, at)
        except (ValueError, RuntimeError) as exc:  # SessionClosed too: the peer is ending
            logger.debug("webrtc input not taken: %s", exc)
            self.clock.landed(None)
            return
        self.clock.landed(receipt)
        if receipt.dropped is not None:
            self.dropped += 1
            count = self.drops.dropped(time.monotonic())
            if count is not None:
                self.warn(f"microphone input dropped ({count} piece(s) since the last warning): {receipt.dropped}")
            return
        self.pieces += 1
        if at is not None:  # placed afresh: the client hears where
            self.tell({"event": "input", "start_seconds": round(receipt.start_seconds, 4), "sample_rate": rate,
                       "channels": int(samples.shape[0])})
