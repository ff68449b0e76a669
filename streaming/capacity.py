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


class Drain:
    """Whether this replica has stopped taking new sessions: set once (`POST /admin/drain`), read by `/ready` and
    the agent port, so the balancer stops sending new sessions while the open ones play on."""

    def __init__(self) -> None:
        self.active = False

    def start(self) -> None:
        if not self.active:
            logger.info("draining: /ready answers 503 and the agent port 'drain'; open sessions go on")
        self.active = True


def snapshot(engine, drain: Drain) -> Capacity:
    return Capacity(sessions=engine.sessions_open, max_sessions=engine.config.max_sessions,
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
