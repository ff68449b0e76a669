"""What every transport (/ws/jam, Lyria, WebRTC) does with its one live session, written once.

`LiveSession` opens a session on one of the engine's slots, restarts it on that same slot (a restart must never
compete with other clients for a slot: on a full server it would lose), and closes it. Its blocking engine calls
run on the server's pool for them (`ServerConfig.blocking_threads`), never on the event loop's default executor,
which encodes a WebRTC peer's Opus frames every 20 ms and must never wait behind a session being opened or a
melody being analysed. `Tasks` holds the tasks a connection runs beside its reader: the event loop keeps only
weak references to tasks, so an unreferenced one can be collected mid-flight, and whatever is still running when
the connection ends is cancelled then.
"""

import asyncio
import logging
import typing as tp
from concurrent.futures import Executor

from engine.api import JamSession, JamSettings, SessionClosed

logger = logging.getLogger(__name__)

MAX_RESTARTS = 3  # generation failures in a row (no chunk in between) after which a transport stops restarting
T = tp.TypeVar("T")


class Tasks:
    """The tasks one connection owns: referenced until they end, cancelled and awaited by `close()`."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coroutine: tp.Coroutine, name: tp.Optional[str] = None) -> asyncio.Task:
        """Runs `coroutine` beside the reader loop, held here until it ends."""
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Cancels every task but the caller's own and waits until they have ended."""
        current = asyncio.current_task()
        others = [task for task in self._tasks if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


def _close_when_opened(opening: asyncio.Future) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


class LiveSession:
    """A transport's live session: at most one at a time, with the count of generation failures since its last
    chunk (after MAX_RESTARTS of them in a row the transport gives up)."""

    def __init__(self, engine, blocking: Executor) -> None:
        self.engine = engine
        self.blocking = blocking
        self.session: tp.Optional[JamSession] = None
        self.failures = 0
        self.closed = False  # the connection ended: a session that opens now is closed at once

    async def run(self, fn: tp.Callable[..., T], *args: tp.Any) -> T:
        """A blocking engine call (it waits for an engine thread) on the blocking pool."""
        return await asyncio.get_running_loop().run_in_executor(self.blocking, fn, *args)

    async def open(self, settings: JamSettings, seed: int) -> JamSession:
        """Opens a session, taking a slot. Raises what Engine.open_session raises (CapacityError, ValueError,
        EngineUnavailable), and SessionClosed when the connection ended meanwhile; a caller cancelled while the
        engine opens it leaves the session to be closed as soon as it is open."""
        opening = asyncio.get_running_loop().run_in_executor(self.blocking, self.engine.open_session, settings, seed)
        try:
            session = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_when_opened)
            raise
        if self.closed:
            session.close()
            raise SessionClosed("the connection ended while the session was opening")
        self.failures = 0
        self.session = session
        return session

    async def restart(self, seed: int) -> None:
        """A fresh context on the same slot, from the session's latest settings and melody (JamSession.restart);
        changes made meanwhile apply to the restarted stream. Raises SessionClosed when it ended meanwhile."""
        session = self.session
        if session is None:
            raise SessionClosed("no session to restart")
        await self.run(session.restart, seed)
        if self.session is not session:  # ended (and closed) while the engine restarted it
            raise SessionClosed("the session ended while it restarted")

    def failed(self) -> bool:
        """Counts a generation failure; True while the transport should restart."""
        self.failures += 1
        return self.failures <= MAX_RESTARTS

    def chunk_arrived(self) -> None:
        """A chunk came through: the failures in a row start again from zero."""
        self.failures = 0

    def adopt(self, session: JamSession) -> None:
        """Plays a session another connection opened (a resume): the failures in a row start from zero."""
        self.session = session
        self.failures = 0

    def detach(self) -> tp.Optional[JamSession]:
        """Lets go of the session (the caller closes it), so that one opened later is never the one closed."""
        session, self.session = self.session, None
        return session

    def end(self) -> None:
        """Closes the session, if any, freeing its slot."""
        session = self.detach()
        if session is not None:
            session.close()
