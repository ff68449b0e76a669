"""One session's lifecycle, for every transport (/ws/jam, Lyria, WebRTC): written once, here.

A `Supervisor` belongs to one connection (a socket, a WebRTC peer) and plays at most one session at a time. It
opens the session on one of the engine's slots and registers it by id (streaming.sessions.registry), restarts it after a
failure on that same slot (a restart must never compete with other clients for a slot: on a full server it would
lose), holds it for a resume when the connection drops, attaches a held one, and ends it, freeing the slot
exactly once. Its phase (`Phase`, with every transition in `TRANSITIONS`) is the shells' one answer to "is a
session playing": a shell keeps no flag of its own. For transports whose connection delivers the chunks (`pumped`),
the supervisor binds the session's pump (streaming.sessions.pump, the registered session's one) to the connection,
and stops it before a restart, a hold or an end (bar mode's pump runs whoever listens: streaming.bar.session). While
the replica drains the registry holds nothing (`SessionRegistry.holding`), so a connection that drops then ends its
session, and the drain's end closes those held before.

Blocking engine calls (opening, restarting, melody analysis) run on the server's pool for them
(`ServerConfig.blocking_threads`), never on the event loop's default executor, which encodes a WebRTC peer's Opus
frames every 20 ms and must never wait behind a session being opened.
"""

import asyncio
import enum
import logging
import typing as tp
from concurrent.futures import Executor
from dataclasses import dataclass

from engine.api import LiveSession, SessionClosed, SessionSettings, random_seed
from streaming.sessions.pump import ChunkPump, Deliver, OnError, Pace, Pacer
from streaming.sessions.registry import RegisteredSession, SessionRegistry
from streaming.sessions.tasks import Tasks

logger = logging.getLogger(__name__)

MAX_RESTARTS = 3  # generation failures in a row (no chunk in between) after which a transport stops restarting
T = tp.TypeVar("T")


class Phase(enum.Enum):
    """Where a connection's session is: none (IDLE), being opened (OPENING), playing on its slot (PLAYING), or
    being given a fresh context on that slot (RESTARTING). Holding and ending both leave the connection IDLE: a
    held session is the registry's."""

    IDLE = "idle"
    OPENING = "opening"
    PLAYING = "playing"
    RESTARTING = "restarting"


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.OPENING, Phase.PLAYING}),  # start; attach a held session
    Phase.OPENING: frozenset({Phase.PLAYING, Phase.IDLE}),  # opened; refused, or the connection ended meanwhile
    Phase.PLAYING: frozenset({Phase.RESTARTING, Phase.IDLE}),  # a fresh context; held or ended
    Phase.RESTARTING: frozenset({Phase.PLAYING, Phase.IDLE}),  # restarted; ended meanwhile, or given up
}


class Recovery(enum.Enum):
    RESTARTED = "restarted"  # a fresh context on the same slot; the pump waits for `play()`
    GAVE_UP = "gave up"  # the session ended (too many failures, or the engine could not restart it)
    GONE = "gone"  # the session ended meanwhile (the client stopped or left)


@dataclass(frozen=True)
class Outcome:
    """What `recover` did: `seed` of the restarted stream, or `reason` when the restart itself failed."""

    recovery: Recovery
    seed: tp.Optional[int] = None
    reason: tp.Optional[str] = None


class Failures:
    """Generation failures in a row: a transport restarts while there were at most MAX_RESTARTS of them without
    a chunk in between (so a session that keeps failing ends, and a new start may come)."""

    def __init__(self) -> None:
        self.count = 0

    def failed(self) -> bool:
        """Counts a failure; True while the transport should restart."""
        self.count += 1
        return self.count <= MAX_RESTARTS

    def reset(self) -> None:
        """A chunk came through (or another session is played): the count starts again from zero."""
        self.count = 0


def _close_when_opened(opening: asyncio.Future) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


class Supervisor:
    """The session one connection plays. `owner` is the connection (the registry tells it from others); `kind`
    names its sessions in the registry; `on_lost` tells the protocol that the session ended on the server's side
    (a refused start, a failure given up), so that a new start may come. `pumped` makes it bind its sessions'
    pumps to the connection."""

    def __init__(self, engine, blocking: Executor, registry: SessionRegistry, kind: str, owner: object,
                 tasks: Tasks, on_lost: tp.Callable[[], None] = lambda: None) -> None:
        self.engine = engine
        self.blocking = blocking
        self.registry = registry
        self.kind = kind
        self.owner = owner
        self.tasks = tasks
        self.on_lost = on_lost
        self.phase = Phase.IDLE
        self.session: tp.Optional[LiveSession] = None
        self.jam: tp.Optional[RegisteredSession] = None
        self.failures = Failures()
        self.closed = False  # the connection ended: a session that opens now is closed at once
        self._deliver: tp.Optional[Deliver] = None
        self._on_error: tp.Optional[OnError] = None

    def pumped(self, deliver: Deliver, on_error: OnError) -> None:
        """Sessions' pumps hand chunks to `deliver` and a generation failure to `on_error`, on this connection."""
        self._deliver, self._on_error = deliver, on_error

    @property
    def pump(self) -> tp.Optional[ChunkPump]:
        """The pump of the session played here, when this connection delivers its chunks."""
        return self.jam.pump if self.jam is not None and self._deliver is not None else None

    def _move(self, to: Phase) -> None:
        if to not in TRANSITIONS[self.phase]:
            raise RuntimeError(f"a session cannot go from {self.phase.value} to {to.value}")
        self.phase = to

    async def run(self, fn: tp.Callable[..., T], *args: tp.Any) -> T:
        """A blocking engine call (it waits for an engine thread) on the blocking pool."""
        return await asyncio.get_running_loop().run_in_executor(self.blocking, fn, *args)

    # -- start, attach ------------------------------------------------------------------------------------------
    async def start(self, settings: SessionSettings, seed: int, pace: tp.Optional[Pace] = None,
                    session_id: tp.Optional[str] = None) -> RegisteredSession:
        """Opens a session on the engine (taking a slot), registers it (under `session_id`, one from
        `registry.new_id`, or a new id) and, when pumped, starts its pump at `pace`. Raises what
        Engine.open_session raises (CapacityError, ValueError, EngineUnavailable), and SessionClosed when the
        connection ended meanwhile."""
        running = asyncio.get_running_loop()
        return await self.open_with(lambda: running.run_in_executor(self.blocking, self.engine.open_session,
                                                                    settings, seed), seed, pace, session_id)

    async def open_with(self, opener: tp.Callable[[], tp.Awaitable[tp.Any]], seed: int,
                        pace: tp.Optional[Pace] = None, session_id: tp.Optional[str] = None) -> RegisteredSession:
        """`start` with a session `opener` makes (a bar session: its loop decoded, then a source on a slot).
        A caller cancelled while it opens leaves the session to be closed as soon as it is open; one that could
        not open tells the protocol (`on_lost`)."""
        self._move(Phase.OPENING)
        opening = asyncio.ensure_future(opener())
        try:
            session = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_when_opened)
            self.phase = Phase.IDLE
            raise
        except BaseException:
            self.phase = Phase.IDLE
            self.on_lost()
            raise
        if self.closed or self.phase is not Phase.OPENING:  # the connection ended, or the client stopped
            session.close()
            self.phase = Phase.IDLE
            raise SessionClosed("the connection ended while the session was opening")
        self._move(Phase.PLAYING)
        self.failures.reset()
        self.session = session
        self.jam = self.registry.open(self.kind, session, seed, self.engine.describe(), owner=self.owner,
                                      session_id=session_id)
        if self._bind(pace):
            self.pump.start()
        return self.jam

    def attach(self, session_id: tp.Any, pace: tp.Optional[Pace] = None) -> RegisteredSession:
        """Takes over a held session (SessionError when it cannot be: the text says why). Its pump, with the
        chunk in the making, now delivers here at `pace`; the caller replays what its client lacks
        (`ChunkPump.replay_from`, `resend`), then calls `play()`."""
        if self.phase is not Phase.IDLE:
            raise RuntimeError("a session is already playing on this connection")
        jam = self.registry.attach(session_id, self.kind, owner=self.owner)
        self._move(Phase.PLAYING)
        self.failures.reset()
        self.jam, self.session = jam, jam.session
        self._bind(pace)
        return jam

    def chunk_arrived(self) -> None:
        """A chunk came through: the failures in a row start again from zero."""
        self.failures.reset()

    # -- play, pause, restart -----------------------------------------------------------------------------------
    def play(self) -> None:
        if self.pump is not None and self.phase is Phase.PLAYING:
            self.pump.start()

    async def pause(self) -> None:
        """Stops sending; the chunk in the making is kept, so `play` goes on where it paused."""
        if self.pump is not None:
            await self.pump.stop()

    async def restart(self, seed: int, play: bool = True) -> None:
        """A fresh context on the slot the session holds (LiveSession.restart), from its latest settings and melody
        (changes made meanwhile apply to it), pumped from its chunk 0 at the same pace (the listener's clock goes
        on); `play` False leaves it paused. Raises SessionClosed when there is no session or it ended meanwhile,
        and what the engine raises when it could not restart it (EngineUnavailable, RuntimeError)."""
        session, jam, pump = self.session, self.jam, self.pump
        if self.phase is not Phase.PLAYING or session is None or jam is None:
            raise SessionClosed("no session to restart")
        self._move(Phase.RESTARTING)
        try:
            if pump is not None:
                await pump.stop()
            await self.run(session.restart, seed)
        except BaseException:
            if self.session is session:
                self.phase = Phase.PLAYING  # the session is still there (the caller decides what now)
            raise
        if self.session is not session:  # ended (and closed) while the engine restarted it
            raise SessionClosed("the session ended while it restarted")
        self._move(Phase.PLAYING)
        jam.restarted(seed)
        if pump is not None and play:
            pump.start()

    async def recover(self, tell: tp.Callable[[bool], tp.Awaitable[None]]) -> Outcome:
        """After a generation failure: `tell(restarting)` says so in the transport's words, then the session goes
        on with a fresh context (new seed) on its slot, paused until `play()`; unless the failures repeat
        without a chunk in between or the restart fails, and then the session ends (the protocol hears first)."""
        restarting = self.failures.failed()
        await tell(restarting)
        if not restarting:
            await self.give_up()
            return Outcome(Recovery.GAVE_UP)
        seed = random_seed()
        try:
            await self.restart(seed, play=False)
        except SessionClosed:
            return Outcome(Recovery.GONE)
        except Exception as exc:  # the engine could not restart it (unavailable, shut down)
            await self.give_up()
            return Outcome(Recovery.GAVE_UP, reason=f"could not restart the session: {exc}")
        return Outcome(Recovery.RESTARTED, seed=seed)

    async def give_up(self) -> None:
        """Ends the session on the server's side: the protocol first (no update may reach a session being
        closed), then the slot."""
        self.on_lost()
        await self.end()

    # -- hold, end ------------------------------------------------------------------------------------------------
    async def hold(self) -> bool:
        """The connection dropped: keeps the session for the next connection (streaming.sessions.registry), with its
        pump stopped after the chunk in the making; False when there is none to keep or the registry does not hold
        sessions now (then the caller ends it)."""
        jam = self.jam
        if jam is None or self.phase is Phase.OPENING:
            return False
        if self.pump is not None:
            await self.pump.stop()
        if self.jam is not jam or not self.registry.hold(jam):
            return False
        self._let_go()
        return True

    async def finish(self, keep: bool) -> None:
        """The connection is done with its session: held for a resume when `keep` and the registry holds
        sessions now, else ended."""
        if not (keep and await self.hold()):
            await self.end()

    async def end(self) -> bool:
        """Ends the session for good, freeing its slot once and completing its recording; True when there was
        one. The supervisor lets go of it before the first await, so a session started meanwhile (a client's
        PLAY racing a failure report) is never the one ended here."""
        session, jam, pump = self.session, self.jam, self.pump
        self._let_go()
        if pump is not None:
            await pump.stop()
        if jam is not None:
            self.registry.end(jam)
        elif session is not None:
            session.close()
        return session is not None

    def _let_go(self) -> None:
        self.session, self.jam = None, None
        if self.phase is not Phase.IDLE:
            self._move(Phase.IDLE)

    # -- the pump -------------------------------------------------------------------------------------------------
    def _bind(self, pace: tp.Optional[Pace]) -> bool:
        """Binds the session's pump to this connection at `pace` (asap by default); False when not pumped."""
        if self.pump is None:
            return False
        self.pump.bind(pace or Pacer("asap"), self._delivered, self._failed, self.tasks)
        return True

    async def _delivered(self, chunk) -> None:
        await self._deliver(chunk)
        self.chunk_arrived()

    async def _failed(self, exc: Exception) -> None:
        if not self.closed:
            await self._on_error(exc)
