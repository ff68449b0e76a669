"""Realtime streams' deadlines, and the one rule by which batch work runs beside them: it fits in their slack.

A realtime stream is a session whose consumer asks for each chunk with the moment its listener runs out of audio
without it (`LiveSession.next_chunk(deadline)`: the sidecar's realtime socket pace, the WebRTC track, Lyria). Each
has an entry here: when its next chunk is due, and the work that chunk still needs (its decode steps on the LM
thread, then its decode on the codec thread). A chunk made moves the entry on by the chunk's length (the listener's
clock moves on by what it got), so the next chunk's due time is known before it is asked for; an entry whose chunk
was not asked for by its due time is dropped (the listener stopped asking: a pause, a dropped connection).

Both workers order their work by slack, earliest deadline first: a stream's chunk work is never held, and batch work
(a prediction's steps and prefills, its decode and MultiBand Diffusion pieces, a melody's analysis, a recording's
render, a continuation's prompt encode) has no deadline of its own. A batch piece starts on either worker only when
its cost fits in every realtime stream's slack:

    slack = due - now - (steps left x one live step) - (its decode and every other decode due no later) - MARGIN

as if the piece held up the chunk's steps too, which it does where the two threads share the cores (a CPU) or the
device (a GPU runs their kernels side by side). So batch work takes only the time that leaves every realtime stream
on schedule, and with no realtime stream it runs as it comes. A piece's cost is estimated per kind (`label`): the
longest of the last COST_SAMPLES that ran, PRIOR_SECONDS before one has. A worker that held batch work for
HOLD_LIMIT_SECONDS runs one piece anyway, so batch work always advances (a stream late whatever runs, or a piece
longer than every gap between chunks).

Heavy work announces its kinds of pieces when it is admitted (`admit`), before any of them runs: `wait_bound()` is
what a realtime chunk may then wait behind on the two workers, which the sidecar adds to the lead it asks ahead by
(streaming.sessions.lead), so the lead grows before the load arrives rather than after a late chunk.
"""

import logging
import threading
import time
import typing as tp
from collections import defaultdict, deque
from dataclasses import dataclass

logger = logging.getLogger(__name__)

LM, CODEC = "engine", "codec"  # the workers' names (engine.core): where a piece runs
MARGIN_SECONDS = 0.05  # a chunk is made this long before its due time: its encoding and send
PRIOR_SECONDS = 0.1  # the cost of a kind of piece none of which has run yet
COST_SAMPLES = 8  # a kind's cost: the longest of its last this many pieces
HOLD_LIMIT_SECONDS = 2.0  # batch work held this long on a worker runs one piece anyway
STEP_SMOOTHING = 0.2  # weight of the newest live step time in its running estimate


@dataclass
class _Stream:
    due: float  # time.monotonic() when the listener runs dry without the next chunk
    asked: bool  # the chunk was asked for (else the next one is expected: dropped once its due time passed)
    steps_left: tp.Callable[[], int]  # decode steps the chunk still needs (any thread; a snapshot)
    decode_seconds: float  # its decode on the codec thread, as the stream's recent decodes took


class Deadlines:
    """Shared by the two workers, the scheduler and the sessions (any thread: one lock, held briefly)."""

    def __init__(self, clock: tp.Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._costs: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=COST_SAMPLES))
        self._held_since: dict[str, float] = {}  # worker -> when it began holding batch work
        self._granted: set[str] = set()  # workers whose hold ran out: their next batch piece runs
        self._admitted: dict[str, int] = defaultdict(int)  # "worker:label" -> admitted works that run such pieces
        self._wakes: list[tp.Callable[[], None]] = []
        self.step_seconds = 0.0  # one live decode step of the LM thread (running estimate; 0 before one ran)

    # -- realtime streams --------------------------------------------------------------------------------------
    def expect(self, key: object, due: float, steps_left: tp.Callable[[], int], decode_seconds: float,
               asked: bool) -> None:
        """The next chunk of stream `key` is due at `due`; `asked`: it is being made now (else expected)."""
        with self._lock:
            self._streams[id(key)] = _Stream(due, asked, steps_left, decode_seconds)
        self._wake()

    def forget(self, key: object) -> None:
        """Stream `key` has no deadline now (closed, failed, or its consumer asks without one)."""
        with self._lock:
            dropped = self._streams.pop(id(key), None)
        if dropped is not None:
            self._wake()

    def _live(self, now: float) -> list[_Stream]:
        """The entries that still count (lock held): an expected chunk not asked for by its due time is dropped."""
        for key in [key for key, s in self._streams.items() if not s.asked and s.due < now]:
            del self._streams[key]
        return list(self._streams.values())

    def slack(self) -> float:
        """Seconds a piece of batch work may take now and every realtime stream still get its chunk in time (inf
        without one)."""
        with self._lock:
            now = self.clock()
            streams = self._live(now)
            step = self.step_seconds
        least = float("inf")
        for stream in streams:
            decodes = sum(other.decode_seconds for other in streams if other.due <= stream.due)
            least = min(least, stream.due - now - stream.steps_left() * step - decodes - MARGIN_SECONDS)
        return least

    # -- batch pieces ------------------------------------------------------------------------------------------
    def cost(self, worker: str, label: str) -> float:
        """A piece's estimated seconds: the longest of the last COST_SAMPLES of its kind, else PRIOR_SECONDS."""
        with self._lock:
            recent = self._costs.get(f"{worker}:{label}")
            return max(recent) if recent else PRIOR_SECONDS

    def admits(self, worker: str, label: str) -> bool:
        """Whether a batch piece of kind `label` may start on `worker` now: its cost fits in every realtime
        stream's slack, or the worker has held batch work for HOLD_LIMIT_SECONDS (then its next batch piece runs,
        whatever its kind, and the count starts again once it did: `observe`)."""
        cost = self.cost(worker, label)
        fits = cost <= self.slack()
        with self._lock:
            now = self.clock()
            if fits or worker in self._granted:
                self._held_since.pop(worker, None)
                return True
            since = self._held_since.setdefault(worker, now)
            if now - since < HOLD_LIMIT_SECONDS:
                return False
            del self._held_since[worker]
            self._granted.add(worker)
        logger.info("%s: a %s piece (%.3f s) runs after batch work was held %.1f s", worker, label, cost, now - since)
        return True

    def observe(self, worker: str, label: str, seconds: float) -> None:
        """A batch piece of kind `label` took `seconds` on `worker` (which may hold batch work again)."""
        with self._lock:
            self._costs[f"{worker}:{label}"].append(seconds)
            self._granted.discard(worker)

    def observe_step(self, seconds: float) -> None:
        """One live decode step took `seconds` (LM thread)."""
        self.step_seconds = seconds if not self.step_seconds else (
            (1 - STEP_SMOOTHING) * self.step_seconds + STEP_SMOOTHING * seconds)

    # -- admitted heavy work -----------------------------------------------------------------------------------
    def admit(self, pieces: tp.Iterable[tuple[str, str]]) -> tp.Callable[[], None]:
        """Work that will run batch pieces of these (worker, label) kinds from now on; returns its release (call
        it once the work ended; a second call does nothing)."""
        keys = [f"{worker}:{label}" for worker, label in set(pieces)]
        released = threading.Event()
        with self._lock:
            for key in keys:
                self._admitted[key] += 1

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._lock:
                for key in keys:
                    self._admitted[key] -= 1
                    if not self._admitted[key]:
                        del self._admitted[key]

        return release

    def wait_bound(self) -> float:
        """What a realtime chunk may wait behind while the admitted work runs: on each worker its longest kind of
        piece (estimated as `cost`), the two added (0 when no heavy work is admitted)."""
        with self._lock:
            kinds = list(self._admitted)
            costs = {key: (max(self._costs[key]) if self._costs.get(key) else PRIOR_SECONDS) for key in kinds}
        longest: dict[str, float] = {}
        for key, cost in costs.items():
            worker = key.split(":", 1)[0]
            longest[worker] = max(longest.get(worker, 0.0), cost)
        return sum(longest.values())

    # -- waking the workers ------------------------------------------------------------------------------------
    def on_change(self, wake: tp.Callable[[], None]) -> None:
        """`wake` is called when a stream's deadline moves or goes (a worker holding batch work looks again)."""
        self._wakes.append(wake)

    def _wake(self) -> None:
        for wake in list(self._wakes):
            wake()
