"""A running bar session as its listeners see it, whatever carries it (a socket, HTTP pulls, one after another).

magenta-retry's JamWorker rules, on the sidecar's event loop: chunks go into an outbox by index; a listener takes
the next one not yet delivered (`next`, waiting up to a timeout); `consume` acknowledges playback; the source is
asked for chunk k only while k <= max(consumed, delivered - 1) + AHEAD_CHUNKS, so the server stays at most one
chunk ahead of the listener and a listener that stops pulling stops generation. The outbox keeps only chunks not
yet delivered plus the last delivered one, so its memory is bounded. A generation failure restarts the source
(the loop again, on its slot) up to MAX_RESTARTS times in a row (streaming.sessions.supervisor.Failures); then the jam
ends (`failure` says why).
"""

import asyncio
import logging
import time
import typing as tp
from concurrent.futures import Executor

from engine.api import SessionClosed, random_seed
from streaming.bar.generate import decode_loop
from streaming.bar.protocol import bar_params
from streaming.bar.source import BarChunk, BarSource
from streaming.sessions.supervisor import Failures

logger = logging.getLogger(__name__)

AHEAD_CHUNKS = 1  # JamWorker's _max_buffer_ahead


class BarSession:
    def __init__(self, source: BarSource, on_chunk: tp.Callable[[BarChunk], None] = lambda chunk: None) -> None:
        self.source = source
        self.on_chunk = on_chunk  # each chunk as it is generated (the session's recording)
        self.outbox: dict[int, BarChunk] = {}
        self.generated = 0  # chunks generated so far (the next index to make)
        self.delivered = 0  # chunks handed to a listener (the next index to hand out)
        self.consumed = -1  # the last index a listener acknowledged
        self.failure: tp.Optional[str] = None
        self.running = True
        self.last_chunk_started_at: tp.Optional[float] = None
        self.last_chunk_completed_at: tp.Optional[float] = None
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._produce(), name="bar-jam")

    # -- listeners ---------------------------------------------------------------------------------------------
    async def next(self, timeout: float) -> tp.Optional[BarChunk]:
        """The next chunk not yet delivered, marked delivered; None when none came within `timeout` or the jam
        ended (then `running` is False)."""
        deadline = time.monotonic() + timeout
        while True:
            chunk = self.outbox.get(self.delivered)
            if chunk is not None:
                self.delivered += 1
                self._trim()
                self._wake()
                return chunk
            left = deadline - time.monotonic()
            if not self.running or left <= 0:
                return None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=left)
            except TimeoutError:
                return None

    def undeliver(self, chunk: BarChunk) -> None:
        """A chunk `next` gave whose send failed (the listener left): the next listener gets it again."""
        if self.delivered == chunk.index + 1:
            self.delivered = chunk.index

    def consume(self, index: int) -> None:
        self.consumed = max(self.consumed, index)
        self._wake()

    @property
    def buffer_ahead(self) -> int:
        return self.generated - self.delivered

    def close(self) -> None:
        """Ends the jam (event loop thread; twice is fine): the source closes (its slot freed), the producer is
        cancelled, waiting listeners get None."""
        self.running = False
        self.source.close()
        self._task.cancel()
        self._wake()

    # -- inside ------------------------------------------------------------------------------------------------
    def _wake(self) -> None:
        self._changed.set()

    def _trim(self) -> None:
        for index in [i for i in self.outbox if i < self.delivered - 1]:
            del self.outbox[index]

    def _may_generate(self) -> bool:
        return self.generated <= max(self.consumed, self.delivered - 1) + AHEAD_CHUNKS

    async def _produce(self) -> None:
        failures = Failures()
        try:
            while self.running:
                while not self._may_generate():
                    self._changed.clear()
                    await self._changed.wait()
                self.last_chunk_started_at = time.time()
                try:
                    chunk = await asyncio.wrap_future(self.source.next_chunk())
                except SessionClosed:
                    return
                except Exception as exc:  # generation failed: the loop again on the same slot, a few times
                    restarting = failures.failed()
                    logger.warning("bar session failed (%d in a row): %s", failures.count, exc)
                    if not restarting:
                        self.failure = f"generation failed: {exc}"
                        return
                    try:
                        await asyncio.wrap_future(self.source.restart(random_seed()))
                    except SessionClosed:
                        return
                    except Exception as again:  # the engine cannot restart it (unavailable)
                        self.failure = f"could not restart the session: {again}"
                        return
                    continue
                failures.reset()
                self.outbox[chunk.index] = chunk
                self.generated = chunk.index + 1
                try:
                    self.on_chunk(chunk)
                except Exception:  # the recording's trouble is not the music's
                    logger.exception("bar session: a chunk could not be recorded")
                self.last_chunk_completed_at = time.time()
                self._wake()
        finally:
            self.running = False
            self._wake()


async def open_bar(engine, blocking: Executor, loop: bytes, raw: dict, seed: int) -> BarSession:
    """Decodes the loop and opens a bar source on an engine slot (both on the blocking pool). Raises
    ProtocolError (bad loop or parameters), CapacityError (no free slot), ValueError or EngineUnavailable; a
    caller cancelled meanwhile leaves the source to be closed as soon as it is open."""
    running = asyncio.get_running_loop()
    wav, rate = await running.run_in_executor(blocking, decode_loop, loop)
    params = bar_params(raw, rate)
    opening = running.run_in_executor(blocking, BarSource, engine, params, (wav, rate), seed)
    try:
        source = await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(lambda done: done.cancelled() or done.exception() or done.result().close())
        raise
    return BarSession(source)


def recorded(jam) -> None:
    """A registered bar session records each chunk it generates."""
    jam.session.on_chunk = jam.generated


async def open_jam(engine, registry, blocking: Executor, loop: bytes, raw: dict, seed: tp.Optional[int]):
    """A bar session opened (`open_bar`) and registered as a `bar` session held by no connection (the HTTP
    routes' sessions, streaming.sessions.registry); raises what `open_bar` raises."""
    seed = random_seed() if seed is None else seed
    jam = registry.open("bar", await open_bar(engine, blocking, loop, raw, seed), seed, engine.describe(),
                        owner=None)
    recorded(jam)
    return jam
