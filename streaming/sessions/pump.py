"""The one pump: how a session's chunks travel from the engine to whoever listens, for every transport.

A `ChunkPump` belongs to a registered session (streaming.sessions.registry), not to a connection, and owns what
must outlive one: the chunk in the making (a request to the engine that a resumed connection gets), the stream's
lead (streaming.sessions.lead) and the last REPLAY_CHUNKS chunks with the index of the first one not yet delivered,
from which a resuming client is served. A transport only binds it (`bind`) to how a chunk is delivered (a socket
send, PCM into a WebRTC track, a bar listener's pull) and to its pace (`Pace`): at pace asap the next chunk is in the
making while the current one is delivered, so generation overlaps sending; a just-in-time pace asks for each chunk
only when it is due (`Pacer` for a socket's listener, the WebRTC track's low-water mark, bar mode's one chunk
ahead). A slow reader stalls the pump at its delivery, which stalls generation: per session at most one chunk
waits in memory beside the one being written (plus the transport's 64 KiB write buffer).
"""

import asyncio
import logging
import time
import typing as tp
from collections import deque

from engine.api import Landing
from streaming.sessions.lead import Lead
from streaming.sessions.tasks import Tasks

logger = logging.getLogger(__name__)

SEND_WAIT_SECONDS = 5.0  # how long stopping a pump waits for a send under way (a slow reader's socket)
REPLAY_CHUNKS = 4  # chunks kept for a resuming client: the one in flight when the connection broke, and before

Deliver = tp.Callable[[tp.Any], tp.Awaitable[None]]
OnError = tp.Callable[[Exception], tp.Awaitable[None]]


class SessionError(LookupError):
    """A session that cannot be attached (by its id, or from the chunk asked for); the text says why (sent to the
    client as is)."""


class Pace(tp.Protocol):
    """When a transport's listener wants its chunks. `lead` is the stream's, handed over by the pump that paces
    with it (`ChunkPump.bind`), so that it outlives a connection."""

    lead: Lead

    @property
    def just_in_time(self) -> bool:
        """True: the next chunk is asked for when due (`before_request`); False: while this one is delivered."""

    async def before_request(self) -> tp.Optional[float]:
        """Waits until the next chunk is due; returns when the listener runs dry without it (time.monotonic)."""

    async def before_send(self, chunk: tp.Any) -> None:
        """Holds a chunk that came too early for its listener."""

    def sent(self, chunk: tp.Any) -> None:
        """A chunk was delivered."""


class Pacer:
    """Paces a stream for a socket's listener, whose clock starts at the first send and who plays chunks back to
    back.

    "realtime" is generated just in time: the next chunk is asked for when the listener has `lead.seconds` of
    audio left (streaming.sessions.lead states the rule), and sent as soon as it is ready. "asap" asks for the next
    chunk as soon as one arrives and sends as fast as chunks are generated. A chunk that arrives after the listener
    ran dry counts as an underrun, and the listener's clock slips by the gap (as a client that waits for it does)."""

    def __init__(self, pace: str) -> None:
        self.pace = pace
        self.lead = Lead()
        self.started: tp.Optional[float] = None
        self.sent_seconds = 0.0
        self.underruns = 0
        self._last: tp.Optional[tuple[int, float, float]] = None  # last chunk sent: index, listener time, start

    @property
    def just_in_time(self) -> bool:
        return self.pace == "realtime"

    async def before_request(self) -> tp.Optional[float]:
        if self.just_in_time and self.started is not None:
            wait = self.started + self.sent_seconds - self.lead.seconds - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        return self.deadline()

    async def before_send(self, chunk: tp.Any) -> None:
        """Holds a chunk that would put the listener more than the lead and this chunk ahead (a stream that was
        generated further ahead, e.g. before its pace changed to realtime)."""
        if self.pace != "realtime" or self.started is None:
            return
        ahead = self.sent_seconds - (time.monotonic() - self.started)
        allowed = self.lead.seconds + chunk.seconds
        if ahead > allowed:
            await asyncio.sleep(ahead - allowed)

    def sent(self, chunk: tp.Any) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started = now
        elif self.just_in_time and now > self.started + self.sent_seconds:
            self.underruns += 1
            logger.info("realtime listener ran dry for %.3f s (underrun %d)", now - self.started - self.sent_seconds,
                        self.underruns)
            self.started = now - self.sent_seconds
        self._last = (chunk.index, self.started + self.sent_seconds, chunk.start_seconds)
        self.sent_seconds += chunk.seconds

    def heard_in(self, placement: Landing) -> float:
        """Seconds from now until the listener hears where `placement` starts, if it plays without gaps."""
        now = time.monotonic()
        if self.started is None:
            return placement.stream_seconds + self.lead.seconds
        if self._last is None or placement.chunk < self._last[0]:  # nothing of this stream sent yet (a restart)
            return max(0.0, self.started + self.sent_seconds + placement.stream_seconds - now)
        _, at, start = self._last
        return max(0.0, at + placement.stream_seconds - start - now)

    def playing_at(self) -> tp.Optional[float]:
        """Where on the stream's timeline (`Chunk.start_seconds`' clock) the listener is now, if it plays what it
        was sent without gaps (at most the end of what it was sent); None before the first chunk. A player's live
        input is placed there (streaming.fastrtc_ws)."""
        if self._last is None or self.started is None:
            return None
        _, at, start = self._last
        return max(0.0, start + min(time.monotonic(), self.started + self.sent_seconds) - at)

    def deadline(self) -> tp.Optional[float]:
        """When a realtime listener runs out of audio if nothing more arrives."""
        if self.pace != "realtime" or self.started is None:
            return None
        return self.started + self.sent_seconds


class ChunkPump:
    """Requests a session's chunks one after another, paces them and hands them to `deliver`.

    Stopping keeps the chunk in the making (the engine finishes it anyway) and a chunk taken but not yet delivered,
    so that a restarted pump delivers them next: pausing never skips audio. Each chunk from the engine is kept (the
    last REPLAY_CHUNKS) and goes to `on_chunk` (the session's recording) once, before pacing. A generation failure
    ends the pump and goes to `on_error`, which runs as its own task, so it may restart the session and the pump.
    Both tasks belong to the binding's `tasks` (a connection's, which ends them with it); `bind` hands a stopped
    pump, with its chunk in the making and its lead, to the next connection of a resumed session. A send under way
    is let finish before the pump stops (for at most SEND_WAIT_SECONDS): starlette marks a socket whose send was
    cancelled midway as closed, and the connection could send nothing more (a Lyria PAUSE would end the stream).
    Listeners that pull instead (bar mode) `take` kept chunks; their delivery waits until one is taken (`taken`).
    """

    def __init__(self, session, pace: tp.Optional[Pace] = None, deliver: tp.Optional[Deliver] = None,
                 on_error: tp.Optional[OnError] = None, tasks: tp.Optional[Tasks] = None,
                 on_chunk: tp.Callable[[tp.Any], None] = lambda chunk: None) -> None:
        """`session` gives chunks (`next_chunk(deadline) -> Future`) and, where it has one, the wait its chunks may
        now have behind admitted batch work (`expected_wait()`, which the lead adds); bound at once when a pace and
        the rest are given, else by the first `bind`."""
        self.session = session
        self.on_chunk = on_chunk
        self.lead = Lead(getattr(session, "expected_wait", lambda: 0.0))
        self.kept: deque = deque(maxlen=REPLAY_CHUNKS)
        self.generated = 0  # the index after the last chunk from the engine
        self.sent_until = 0  # the index after the last chunk delivered (sent completely, or taken by a listener)
        self.closed = False
        self.pace: tp.Optional[Pace] = None
        self.deliver: tp.Optional[Deliver] = None
        self.on_error: tp.Optional[OnError] = None
        self.tasks: tp.Optional[Tasks] = None
        self._inflight: tp.Optional[asyncio.Future] = None
        self._ready: tp.Optional[tp.Any] = None  # a chunk from the engine, not yet delivered
        self._requested_at: tp.Optional[float] = None  # when the chunk in the making was asked for, just in time
        self._task: tp.Optional[asyncio.Task] = None
        self._sending: tp.Optional[asyncio.Future] = None  # resolved when the send under way is over
        self._stopping = False
        self._changed = asyncio.Event()  # a chunk was kept or delivered, or the pump closed
        if pace is not None and deliver is not None and on_error is not None and tasks is not None:
            self.bind(pace, deliver, on_error, tasks)

    # -- binding, running ---------------------------------------------------------------------------------------
    def bind(self, pace: Pace, deliver: Deliver, on_error: OnError, tasks: Tasks) -> None:
        """Points a stopped pump at a connection (the first, or the next one of a resumed session). A chunk taken
        but not delivered is dropped here: the new connection replays what its client lacks (`replay_from`)."""
        if self.running:
            raise RuntimeError("a running pump cannot change its connection: stop it first")
        pace.lead = self.lead
        self.pace, self.deliver, self.on_error, self.tasks = pace, deliver, on_error, tasks
        self._ready = None
        self._requested_at = None  # the chunk in the making was asked for before the drop: it times no generation

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.tasks is None:
            raise RuntimeError("the pump is not bound to a connection")
        if not self.running and not self.closed:
            self._stopping = False
            self._task = self.tasks.spawn(self._run(), name="chunk-pump")

    async def stop(self) -> None:
        task = self._task
        if task is not None and task is not asyncio.current_task():
            self._stopping = True  # no new send starts
            if self._sending is not None:
                await asyncio.wait([self._sending], timeout=SEND_WAIT_SECONDS)
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._task = None

    def close(self) -> None:
        """Ends the pump for good (its session ends): nothing more is asked for, listeners waiting get nothing.
        The chunk in the making is left to the session, which fails it as it closes."""
        self.closed = True
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None
        self._changed.set()

    def restarted(self) -> None:
        """The (stopped) session has a fresh context: its chunks count from 0 again, so the chunk in the making
        and those kept belong to a stream that is gone."""
        self._inflight = self._ready = self._requested_at = None
        self.kept.clear()
        self.generated = self.sent_until = 0

    # -- resuming -----------------------------------------------------------------------------------------------
    def replay_from(self, from_chunk: tp.Optional[int]) -> list:
        """The kept chunks a client resuming at `from_chunk` (None: the first one not delivered) lacks;
        SessionError when they are not all here."""
        start = self.sent_until if from_chunk is None else from_chunk
        if start > self.generated:
            raise SessionError(f"from_chunk {start} is ahead of the session: its next chunk is {self.generated}")
        oldest = self.kept[0].index if self.kept else self.generated
        if start < oldest:
            raise SessionError(f"chunk {start} is no longer kept: the server keeps the last {REPLAY_CHUNKS} chunks "
                               f"(from {oldest} on)")
        return [chunk for chunk in self.kept if chunk.index >= start]

    async def resend(self, chunks: list) -> None:
        """Delivers kept chunks again (`replay_from`) to a resumed connection, before the pump goes on."""
        for chunk in chunks:
            await self.deliver(chunk)
            self._delivered(chunk)

    # -- listeners that pull (bar mode) -------------------------------------------------------------------------
    async def take(self, timeout: float) -> tp.Optional[tp.Any]:
        """The first kept chunk not yet delivered, marked delivered; None when none came within `timeout` or the
        pump closed."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = [chunk for chunk in self.kept if chunk.index >= self.sent_until]
            if waiting:
                self._mark_sent(waiting[0])
                return waiting[0]
            left = deadline - time.monotonic()
            if self.closed or left <= 0:
                return None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=left)
            except TimeoutError:
                return None

    def give_back(self, chunk: tp.Any) -> None:
        """A chunk `take` gave whose send failed (the listener left): the next listener gets it again."""
        if self.sent_until == chunk.index + 1:
            self.sent_until = chunk.index
            self._changed.set()

    async def taken(self, chunk: tp.Any) -> None:
        """A pulling listener's delivery: waits until `chunk` has been taken (or the pump closed)."""
        while self.sent_until <= chunk.index and not self.closed:
            self._changed.clear()
            await self._changed.wait()

    # -- inside -------------------------------------------------------------------------------------------------
    def _request(self, deadline: tp.Optional[float]) -> None:
        self._inflight = asyncio.wrap_future(self.session.next_chunk(deadline=deadline))
        # a failure is read by the loop; if the pump was stopped meanwhile, nobody else would read it
        self._inflight.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _arrived(self, chunk: tp.Any) -> None:
        self.kept.append(chunk)
        self.generated = chunk.index + 1
        self._changed.set()
        try:
            self.on_chunk(chunk)
        except Exception:  # the recording's trouble is not the music's
            logger.exception("a chunk could not be recorded")

    def _mark_sent(self, chunk: tp.Any) -> None:
        if chunk.index + 1 > self.sent_until:
            self.sent_until = chunk.index + 1
            self._changed.set()

    def _delivered(self, chunk: tp.Any) -> None:
        """A chunk went out: the time since it was asked for (generation, encoding, the write) feeds the lead."""
        self._mark_sent(chunk)
        if self._requested_at is not None:
            self.lead.record(time.monotonic() - self._requested_at)
            self._requested_at = None
        self.pace.sent(chunk)

    async def _run(self) -> None:
        while True:
            if self._ready is None:
                if self._inflight is None:
                    deadline = await self.pace.before_request()
                    self._requested_at = time.monotonic()
                    self._request(deadline)
                try:
                    chunk = await asyncio.shield(self._inflight)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # generation failed: the binding decides what comes next
                    self._inflight = None
                    logger.warning("session failed: %s: %s", type(exc).__name__, exc)
                    self.tasks.spawn(self.on_error(exc), name="generation-error")
                    return
                self._inflight = None
                self._ready = chunk
                self._arrived(chunk)
                if not self.pace.just_in_time:  # asap: the next chunk is made while this one is delivered
                    self._request(None)
            chunk = self._ready
            await self.pace.before_send(chunk)
            if self._stopping:  # parked until stop() cancels: the chunk stays ready for a restarted pump
                await asyncio.get_running_loop().create_future()
            self._sending = asyncio.get_running_loop().create_future()
            try:
                await self.deliver(chunk)
            except Exception as exc:  # the client is gone: its reader loop frees (or holds) the session
                logger.info("could not deliver a chunk (%s); the connection is closing", type(exc).__name__)
                return
            finally:
                self._sending.set_result(None)
                self._sending = None
            self._ready = None
            self._delivered(chunk)
