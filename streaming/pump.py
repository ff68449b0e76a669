"""Pacing and pumping: how a session's chunks travel from the engine to a client at the right speed.

The pump keeps the next chunk in the making while the current one is paced and sent, so generation overlaps
sending; a slow reader stalls the pump at its send, which stalls generation: per connection at most one chunk
waits in memory beside the one being written (plus the transport's 64 KiB write buffer).
"""

import asyncio
import logging
import time
import typing as tp

from streaming.lifecycle import Tasks

logger = logging.getLogger(__name__)


class Pacer:
    """Keeps a realtime stream at most `ahead_chunks` chunks ahead of the listener's clock (which starts at the
    first send); "asap" sends as fast as chunks are generated."""

    def __init__(self, pace: str, ahead_chunks: float = 1.0) -> None:
        self.pace = pace
        self.ahead_chunks = ahead_chunks
        self.started: tp.Optional[float] = None
        self.sent_seconds = 0.0

    async def before_send(self, chunk_seconds: float) -> None:
        if self.pace != "realtime" or self.started is None:
            return
        ahead = self.sent_seconds - (time.monotonic() - self.started)
        allowed = self.ahead_chunks * chunk_seconds
        if ahead > allowed:
            await asyncio.sleep(ahead - allowed)

    def sent(self, seconds: float) -> None:
        if self.started is None:
            self.started = time.monotonic()
        self.sent_seconds += seconds

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
    chunk in the making, to the next connection of a resumed session.
    """

    def __init__(self, session, pacer: Pacer, send_chunk: tp.Callable[[tp.Any], tp.Awaitable[None]],
                 on_error: tp.Callable[[Exception], tp.Awaitable[None]], tasks: Tasks,
                 on_chunk: tp.Callable[[tp.Any], None] = lambda chunk: None) -> None:
        self.session = session
        self.on_chunk = on_chunk
        self.rebind(pacer, send_chunk, on_error, tasks)
        self._inflight: tp.Optional[asyncio.Future] = None
        self._task: tp.Optional[asyncio.Task] = None

    def rebind(self, pacer: Pacer, send_chunk: tp.Callable[[tp.Any], tp.Awaitable[None]],
               on_error: tp.Callable[[Exception], tp.Awaitable[None]], tasks: Tasks) -> None:
        """Points a stopped pump at another connection (a resumed session). A chunk taken but not sent is
        dropped here: the new connection replays what its client lacks (streaming.sessions)."""
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
            self._task = self.tasks.spawn(self._run(), name="chunk-pump")

    async def stop(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            try:
                await self._task
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
                self._request(self.pacer.deadline(after_seconds=chunk.seconds))
            chunk = self._ready
            await self.pacer.before_send(chunk.seconds)
            try:
                await self.send_chunk(chunk)
            except Exception as exc:  # the client is gone: its reader loop frees (or holds) the session
                logger.info("could not send a chunk (%s); the connection is closing", type(exc).__name__)
                return
            self._ready = None
            self.pacer.sent(chunk.seconds)
