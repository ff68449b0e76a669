"""Pacing and pumping: how a session's chunks travel from the engine to a client at the right speed.

At pace asap the pump keeps the next chunk in the making while the current one is sent, so generation overlaps
sending; at pace realtime it asks for each chunk just in time (Pacer). A slow reader stalls the pump at its send,
which stalls generation: per connection at most one chunk waits in memory beside the one being written (plus the
transport's 64 KiB write buffer).
"""

import asyncio
import logging
import time
import typing as tp

from engine.api import Landing
from streaming.sessions.lead import Lead
from streaming.sessions.tasks import Tasks

logger = logging.getLogger(__name__)

SEND_WAIT_SECONDS = 5.0  # how long stopping a pump waits for a send under way (a slow reader's socket)


class Pacer:
    """Paces a stream for its listener, whose clock starts at the first send and who plays chunks back to back.

    "realtime" is generated just in time: the next chunk is asked for when the listener has `lead.seconds` of
    audio left (streaming.sessions.lead states the rule), and sent as soon as it is ready. "asap" asks for the next
    chunk as
    soon as one arrives and sends as fast as chunks are generated. A chunk that arrives after the listener ran dry
    counts as an underrun, and the listener's clock slips by the gap (as a client that waits for it does)."""

    def __init__(self, pace: str) -> None:
        self.pace = pace
        self.lead = Lead()
        self.started: tp.Optional[float] = None
        self.sent_seconds = 0.0
        self.underruns = 0
        self._requested_at: tp.Optional[float] = None
        self._last: tp.Optional[tuple[int, float, float]] = None  # last chunk sent: index, listener time, start

    @property
    def just_in_time(self) -> bool:
        return self.pace == "realtime"

    async def before_request(self) -> None:
        """Waits until the next chunk is due to be asked for, then starts timing it."""
        if self.just_in_time and self.started is not None:
            wait = self.started + self.sent_seconds - self.lead.seconds - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        self._requested_at = time.monotonic()

    async def before_send(self, chunk_seconds: float) -> None:
        """Holds a chunk that would put the listener more than the lead and this chunk ahead (a stream that was
        generated further ahead, e.g. before its pace changed to realtime)."""
        if self.pace != "realtime" or self.started is None:
            return
        ahead = self.sent_seconds - (time.monotonic() - self.started)
        allowed = self.lead.seconds + chunk_seconds
        if ahead > allowed:
            await asyncio.sleep(ahead - allowed)

    def sent(self, seconds: float, chunk: tp.Any = None) -> None:
        """A chunk went out: the time since it was asked for (generation, encoding, the write) feeds the lead."""
        now = time.monotonic()
        if self._requested_at is not None:
            self.lead.record(now - self._requested_at)
            self._requested_at = None
        if self.started is None:
            self.started = now
        elif self.just_in_time and now > self.started + self.sent_seconds:
            self.underruns += 1
            logger.info("realtime listener ran dry for %.3f s (underrun %d)", now - self.started - self.sent_seconds,
                        self.underruns)
            self.started = now - self.sent_seconds
        if chunk is not None:
            self._last = (chunk.index, self.started + self.sent_seconds, chunk.start_seconds)
        self.sent_seconds += seconds

    def heard_in(self, placement: Landing) -> float:
        """Seconds from now until the listener hears where `placement` starts, if it plays without gaps."""
        now = time.monotonic()
        if self.started is None:
            return placement.stream_seconds + self.lead.seconds
        if self._last is None or placement.chunk < self._last[0]:  # nothing of this stream sent yet (a restart)
            return max(0.0, self.started + self.sent_seconds + placement.stream_seconds - now)
        _, at, start = self._last
        return max(0.0, at + placement.stream_seconds - start - now)

    def deadline(self, after_seconds: float = 0.0) -> tp.Optional[float]:
        """When a realtime listener runs out of audio if nothing beyond `after_seconds` more arrives."""
        if self.pace != "realtime" or self.started is None:
            return None
        return self.started + self.sent_seconds + after_seconds


class ChunkPump:
    """Requests a session's chunks one after another, paces them and hands them to `send_chunk`.

    Stopping keeps the chunk in the making (the engine finishes it anyway) and a chunk taken but not yet sent, so
    that a resumed pump plays them next: pausing never skips audio. `on_chunk` hears of each chunk once, as it
    comes from the engine (before pacing). A generation failure ends the pump and goes to `on_error`, which runs
    as its own task, so it may stop this pump and start another. Both tasks belong to the connection's `tasks`,
    which holds them while they run and ends them with the connection; `rebind` hands a stopped pump, with its
    chunk in the making, to the next connection of a resumed session. A send under way is let finish before the
    pump stops (for at most SEND_WAIT_SECONDS): starlette marks a socket whose send was cancelled midway as closed,
    and the connection could send nothing more (a Lyria PAUSE would end the stream).
    """

    def __init__(self, session, pacer: Pacer, send_chunk: tp.Callable[[tp.Any], tp.Awaitable[None]],
                 on_error: tp.Callable[[Exception], tp.Awaitable[None]], tasks: Tasks,
                 on_chunk: tp.Callable[[tp.Any], None] = lambda chunk: None) -> None:
        self.session = session
        self.on_chunk = on_chunk
        self.rebind(pacer, send_chunk, on_error, tasks)
        self._inflight: tp.Optional[asyncio.Future] = None
        self._task: tp.Optional[asyncio.Task] = None
        self._sending: tp.Optional[asyncio.Future] = None  # resolved when the send under way is over
        self._stopping = False

    def rebind(self, pacer: Pacer, send_chunk: tp.Callable[[tp.Any], tp.Awaitable[None]],
               on_error: tp.Callable[[Exception], tp.Awaitable[None]], tasks: Tasks) -> None:
        """Points a stopped pump at another connection (a resumed session). A chunk taken but not sent is
        dropped here: the new connection replays what its client lacks (streaming.sessions.registry)."""
        self.pacer = pacer
        self.send_chunk = send_chunk
        self.on_error = on_error
        self.tasks = tasks
        self._ready: tp.Optional[tp.Any] = None  # a chunk taken from the engine, not yet sent

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
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

    def _request(self, deadline: tp.Optional[float]) -> None:
        self._inflight = asyncio.wrap_future(self.session.next_chunk(deadline=deadline))
        # a failure is read by the loop; if the pump was stopped meanwhile, nobody else would read it
        self._inflight.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _run(self) -> None:
        while True:
            if self._ready is None:
                if self._inflight is None:
                    await self.pacer.before_request()
                    self._request(self.pacer.deadline())
                try:
                    chunk = await asyncio.shield(self._inflight)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # generation failed: the connection decides what comes next
                    self._inflight = None
                    logger.warning("jam session failed: %s: %s", type(exc).__name__, exc)
                    self.tasks.spawn(self.on_error(exc), name="generation-error")
                    return
                self._inflight = None
                self._ready = chunk
                self.on_chunk(chunk)
                if not self.pacer.just_in_time:  # asap: the next chunk is made while this one is sent
                    self._request(self.pacer.deadline(after_seconds=chunk.seconds))
            chunk = self._ready
            await self.pacer.before_send(chunk.seconds)
            if self._stopping:  # parked until stop() cancels: the chunk stays ready for a restarted pump
                await asyncio.get_running_loop().create_future()
            self._sending = asyncio.get_running_loop().create_future()
            try:
                await self.send_chunk(chunk)
            except Exception as exc:  # the client is gone: its reader loop frees (or holds) the session
                logger.info("could not send a chunk (%s); the connection is closing", type(exc).__name__)
                return
            finally:
                self._sending.set_result(None)
                self._sending = None
            self._ready = None
            self.pacer.sent(chunk.seconds, chunk)
