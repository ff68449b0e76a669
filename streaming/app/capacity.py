"""What a balancer needs to know about this replica: can a new session start here, and how much room is left.

Two answers from one snapshot: `GET /ready` (Kubernetes readiness: 200 while a session can start, 503 when every
slot is taken, while draining or while the engine is unhealthy) and HAProxy's agent-check line (a TCP port that
HAProxy connects to every `agent-inter`, reads one line from, and closes): the weight follows the free slots, as a
percentage of the server's configured weight.

A full replica answers `up 1%`, not `0%`: at 0% on every replica HAProxy itself refuses with an HTTP 503, while
at 1% a session that finds every replica full still reaches one, which answers with the protocol's own
`concurrency_limit_reached`. Draining answers `drain` (no new connections; the open ones stay).
"""

import asyncio
import logging
import time
import typing as tp
from dataclasses import dataclass

logger = logging.getLogger(__name__)

FULL_WEIGHT_PERCENT = 1


@dataclass(frozen=True)
class Capacity:
    sessions: int
    max_sessions: int
    healthy: bool
    draining: bool

    @property
    def free(self) -> int:
        return max(self.max_sessions - self.sessions, 0)

    @property
    def ready(self) -> bool:
        return self.healthy and not self.draining and self.free > 0

    @property
    def reason(self) -> str:
        if not self.healthy:
            return "engine unhealthy"
        if self.draining:
            return "draining"
        return "ready" if self.free else f"all {self.max_sessions} session slots in use"

    def agent_reply(self) -> str:
        """One agent-check line: `down` when unhealthy, `drain` while draining, else `up N%` of free slots."""
        if not self.healthy:
            return "down\n"
        if self.draining:
            return "drain\n"
        percent = round(100 * self.free / self.max_sessions) if self.max_sessions else 0
        return f"up {max(percent, FULL_WEIGHT_PERCENT)}%\n"

    def describe(self) -> dict:
        return {"ready": self.ready, "reason": self.reason, "sessions": self.sessions,
                "max_sessions": self.max_sessions, "free_sessions": self.free, "draining": self.draining}


class Drainable(tp.Protocol):
    """A live client connection (a WebSocket, a WebRTC peer) as the drain sees it."""

    async def on_drain(self, seconds_left: float) -> None: ...

    async def drain_close(self, reason: str) -> None: ...


class Drain:
    """The end of a replica's life without a cut: it stops taking new sessions (`/ready` 503, agent `drain`, the
    engine refuses new sessions), tells every live client once how long it has, lets sessions play until they end or
    `seconds` pass, then closes what is left (1001, with the reason) and sets `done`. Runs on the sidecar's loop."""

    def __init__(self, engine, seconds: float) -> None:
        self.engine = engine
        self.seconds = seconds
        self.active = False
        self.deadline: tp.Optional[float] = None
        self.done = asyncio.Event()
        self._members: set[Drainable] = set()
        self._task: tp.Optional[asyncio.Task] = None

    def join(self, member: Drainable) -> None:
        self._members.add(member)

    def leave(self, member: Drainable) -> None:
        self._members.discard(member)

    @property
    def seconds_left(self) -> tp.Optional[float]:
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    def start(self) -> None:
        """Begins the drain (once; later calls change nothing). Call on the sidecar's event loop."""
        if self.active:
            return
        self.active = True
        self.deadline = time.monotonic() + self.seconds
        self.engine.stop_admitting("this replica is draining: start the session on another one")
        logger.info("draining: no new sessions; %d open sessions have %.0f s", self.engine.sessions_open,
                    self.seconds)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="drain")

    async def _run(self) -> None:
        try:
            for member in list(self._members):
                try:
                    await member.on_drain(self.seconds)
                except Exception as exc:  # that client is gone; the others still hear it
                    logger.debug("drain notice not delivered: %s", exc)
            while self.engine.sessions_open > 0 and time.monotonic() < self.deadline:
                await asyncio.sleep(0.2)
            if self._members:
                logger.info("drain time is up: closing %d connections", len(self._members))
            for member in list(self._members):
                try:
                    await member.drain_close(f"server draining: the {self.seconds:.0f} s drain time is up; "
                                             "connect again to reach another replica")
                except Exception as exc:
                    logger.debug("drain close failed: %s", exc)
        finally:
            self.done.set()
            logger.info("drained")


def snapshot(engine, drain: Drain) -> Capacity:
    return Capacity(sessions=engine.sessions_open, max_sessions=engine.describe()["max_sessions"],
                    healthy=engine.health().ok, draining=drain.active)


async def serve_agent(host: str, port: int, capacity: tp.Callable[[], Capacity]) -> asyncio.AbstractServer:
    """The agent-check port: every connection gets the current line and is closed (HAProxy sends nothing unless
    `agent-send` is set, and whatever it sends is ignored here)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(capacity().agent_reply().encode("ascii"))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, port)
    logger.info("agent-check port listening on %s:%d", host, server.sockets[0].getsockname()[1])
    return server
