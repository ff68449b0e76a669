"""How far ahead of a realtime listener a stream is generated: just in time, by a lead sized from its own timings.

Every chunk's generation time (from its request until it is out: queueing behind other sessions' steps, the
steps, the codec, encoding and the write) is measured per stream. The next chunk is requested when the listener
has `seconds` of audio left:

    lead = max(FLOOR_SECONDS, HEADROOM * max(slowest(last WINDOW generation times),
                                            median(last WINDOW generation times) + expected_wait) + MARGIN_SECONDS)

(the slowest of the last 32 is their 100th percentile: the rare slow chunk, a window roll-over's re-prefill every
few seconds of audio, is exactly the one that would run a listener dry). So a chunk normally arrives MARGIN plus
25 % of its generation time before the listener needs it, the lead follows the stream's recent worst case up at
once (a slower chunk raises it for the next request) and down over WINDOW chunks,
and it never falls under the floor that covers event-loop and network jitter. `expected_wait` is the engine's word
(`LiveSession.expected_wait`): what a chunk may wait behind the batch work it admitted, from the moment it was
admitted, so the lead grows before that load reaches a chunk rather than after a late one, and falls back once the
work is done. Every change a client sends waits
behind at most this lead plus the chunk in the making; nothing else is generated ahead. Before the first
measurement there is nothing to wait for: the first chunk is asked for at once.
"""

import math
import statistics
import typing as tp
from collections import deque

FLOOR_SECONDS = 0.2
MARGIN_SECONDS = 0.1
HEADROOM = 1.25
WINDOW = 32
PERCENTILE = 1.0


class Lead:
    def __init__(self, expected_wait: tp.Callable[[], float] = lambda: 0.0) -> None:
        """`expected_wait`: seconds a chunk may wait behind admitted batch work now (the engine's session says)."""
        self._times: deque[float] = deque(maxlen=WINDOW)
        self.expected_wait = expected_wait

    def record(self, generation_seconds: float) -> None:
        self._times.append(max(0.0, generation_seconds))

    @property
    def seconds(self) -> float:
        if not self._times:
            return FLOOR_SECONDS
        ordered = sorted(self._times)
        high = ordered[max(0, math.ceil(PERCENTILE * len(ordered)) - 1)]  # nearest-rank percentile
        loaded = statistics.median(ordered) + self.expected_wait()
        return max(FLOOR_SECONDS, HEADROOM * max(high, loaded) + MARGIN_SECONDS)
