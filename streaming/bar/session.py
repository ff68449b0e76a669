"""A running bar session as its listeners see it, whatever carries it (a socket, HTTP pulls, one after another).

magenta-retry's JamWorker rules, on the sidecar's event loop, over the registered session's one pump
(streaming.sessions.pump), which keeps the chunk in the making and the last chunks: a listener takes the next chunk
not yet delivered (`next`, waiting up to a timeout); `consume` acknowledges playback; the source is asked for the
next chunk only once the one before was taken, so the server stays one chunk ahead of its listener and a listener
that stops pulling stops generation. The pump belongs to the session, not to a connection: it runs whoever listens
(a socket, HTTP pulls, nobody while the session is held) until the session ends. A generation failure restarts the
source (the loop again, on its slot, the chunk indexes going on) up to MAX_RESTARTS times in a row
(streaming.sessions.supervisor.Failures); then the jam ends (`failure` says why).
"""

import asyncio
import logging
import time
import typing as tp
from concurrent.futures import Executor
from dataclasses import replace

from engine.api import SessionClosed, random_seed
from streaming.bar.generate import decode_loop
from streaming.bar.protocol import bar_params
from streaming.bar.source import BarChunk, BarSource
from streaming.sessions.lead import Lead
from streaming.sessions.registry import RegisteredSession
from streaming.sessions.supervisor import Failures
from streaming.sessions.tasks import Tasks

logger = logging.getLogger(__name__)


class BarSession:
    """A registered bar session's listeners' side: the pace and delivery of its pump (one chunk ahead of what
    was taken), what they consumed, and why it ended. `serve` makes one."""

    just_in_time = True  # the next chunk is asked for once the one before was taken
    lead: Lead  # the stream's, set by ChunkPump.bind

    def __init__(self, jam: RegisteredSession) -> None:
        self.source: BarSource = jam.session
        self.pump = jam.pump
        self.tasks = Tasks()  # the pump's and its failure reports': they end with the session (ChunkPump.close)
        self.consumed = -1  # the last index a listener acknowledged
        self.failure: tp.Optional[str] = None
        self.last_chunk_started_at: tp.Optional[float] = None
        self.last_chunk_completed_at: tp.Optional[float] = None
        self._failures = Failures()
        self.pump.bind(self, self._deliver, self._failed, self.tasks)

    # -- listeners ---------------------------------------------------------------------------------------------
    async def next(self, timeout: float) -> tp.Optional[BarChunk]:
        """The next chunk not yet delivered, marked delivered; None when none came within `timeout` or the jam
        ended (then `running` is False)."""
        return await self.pump.take(timeout)

    def undeliver(self, chunk: BarChunk) -> None:
        """A chunk `next` gave whose send failed (the listener left): the next listener gets it again."""
        self.pump.give_back(chunk)

    def consume(self, index: int) -> None:
        self.consumed = max(self.consumed, index)

    @property
    def running(self) -> bool:
        return not self.pump.closed

    @property
    def generated(self) -> int:
        """Chunks generated so far (the next index to make)."""
        return self.pump.generated

    @property
    def delivered(self) -> int:
        """Chunks handed to a listener (the next index to hand out)."""
        return self.pump.sent_until

    @property
    def buffer_ahead(self) -> int:
        return self.generated - self.delivered

    @property
    def outbox(self) -> list[BarChunk]:
        """The chunks not yet delivered, and the last one delivered."""
        return [chunk for chunk in self.pump.kept if chunk.index >= self.delivered - 1]

    # -- the pump's pace and delivery --------------------------------------------------------------------------
    async def before_request(self) -> None:
        self.last_chunk_started_at = time.time()

    async def before_send(self, chunk: BarChunk) -> None:
        """Bar chunks are handed out as soon as they are made."""

    def sent(self, chunk: BarChunk) -> None:
        """The listener's own pulls are its clock."""

    async def _deliver(self, chunk: BarChunk) -> None:
        self._failures.reset()
        self.last_chunk_completed_at = time.time()
        await self.pump.taken(chunk)

    async def _failed(self, exc: Exception) -> None:
        """Generation failed: the loop again on the same slot, a few times; else the jam ends here."""
        if not isinstance(exc, SessionClosed):
            restarting = self._failures.failed()
            logger.warning("bar session failed (%d in a row): %s", self._failures.count, exc)
            if not restarting:
                self.failure = f"generation failed: {exc}"
            else:
                try:
                    await asyncio.wrap_future(self.source.restart(random_seed()))
                except SessionClosed:
                    pass
                except Exception as again:  # the engine cannot restart it (unavailable)
                    self.failure = f"could not restart the session: {again}"
                else:
                    self.pump.start()
                    return
        self.pump.close()


def serve(jam: RegisteredSession) -> BarSession:
    """A registered bar session (its session a BarSource) served to listeners, its pump started: generation
    starts at once, one chunk ahead."""
    bar = BarSession(jam)
    jam.set_state(bar)
    bar.pump.start()
    return bar


async def open_source(engine, blocking: Executor, loop: bytes, raw: dict, seed: int,
                      model: tp.Optional[str] = None) -> BarSource:
    """Decodes the loop and opens a bar source on an engine slot (both on the blocking pool), playing `model`
    (the registry's selection: magenta-retry's /model/select). Raises
    ProtocolError (bad loop or parameters), CapacityError (no free slot), ValueError or EngineUnavailable; a
    caller cancelled meanwhile leaves the source to be closed as soon as it is open."""
    running = asyncio.get_running_loop()
    wav, rate = await running.run_in_executor(blocking, decode_loop, loop)
    params = replace(bar_params(raw, rate), model=model)
    opening = running.run_in_executor(blocking, BarSource, engine, params, (wav, rate), seed)
    try:
        source = await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(lambda done: done.cancelled() or done.exception() or done.result().close())
        raise
    return source


async def open_jam(engine, registry, blocking: Executor, loop: bytes, raw: dict,
                   seed: tp.Optional[int]) -> RegisteredSession:
    """A bar session opened (`open_source`), registered as a `bar` session held by no connection (the HTTP
    routes' sessions, streaming.sessions.registry) and served; raises what `open_source` raises."""
    seed = random_seed() if seed is None else seed
    jam = registry.open("bar", await open_source(engine, blocking, loop, raw, seed, registry.model), seed,
                        engine.describe(),
                        owner=None)
    serve(jam)
    return jam
