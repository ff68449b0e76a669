"""What a balancer needs to know about this replica: can a new session start here, and how much room is left.

Two answers from one snapshot: `GET /ready` (Kubernetes readiness: 200 while a session can start, 503 when every
slot is taken, while draining or while the engine is unhealthy) and HAProxy's agent-check line (a TCP port that
HAProxy connects to every `agent-inter`, reads one line from, and closes).

The agent's weight is chosen for HAProxy's `leastconn` (deploy/haproxy.cfg), which ranks a server by (connections
+ 1) / weight, and ranks a server with no connection first whatever its weight (lb_fwlc.c). HAProxy counts a
WebSocket session's connection itself, the moment it sends it, so the weight must not count those sessions again:
a weight that fell with every session (the old `up 50%` with half the slots free) is only as fresh as the last
agent check, and within one `agent-inter` a replica that had just taken a session still showed its old weight
while its peers showed their new one, so a burst of starts went to it twice and found it full (a spread of
[2, 1, 1] with two refusals on three two-slot replicas). The weight is therefore the share of slots not taken by
sessions that no connection carries (held for a resume, WebRTC peers whose audio goes over UDP, HTTP-driven bar
sessions): it does not move when a WebSocket session starts or ends, so a replica with a free slot always ranks
before a full one. A full replica answers `up 1%` while a connection carries one of its sessions (it ranks last,
and a session that finds every replica full still reaches one, which answers the protocol's own
`concurrency_limit_reached`, not HAProxy's 503), and `up 0%` when none does (with no connection HAProxy would rank
it first). Draining answers `up 0%` too: out of the balance, while requests that name a session still reach it
(`use-server`). The agent never sends HAProxy's `drain` or `maint`: those set an administrative state that only the
agent's `ready` would lift, so a replica restarted at the same address stayed out of the balance for good.
"""

import asyncio
import logging
import time
import typing as tp
from dataclasses import dataclass

logger = logging.getLogger(__name__)

FULL_WEIGHT_PERCENT = 1
DRAIN_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Capacity:
    sessions: int
    max_sessions: int
    healthy: bool
    draining: bool
    unconnected: int = 0  # sessions no open connection carries: held ones, WebRTC peers, HTTP-driven bar sessions
    jobs: int = 0  # prediction jobs queued or running, or finished moments ago (streaming.jobs.table.outstanding)
    drained: bool = False  # the drain is over: nothing it waits for is left, or its time ran out

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
            if self.drained:
                return "drained"
            left = [f"{count} {name}{'s' if count != 1 else ''}"
                    for count, name in ((self.sessions, "session"), (self.jobs, "job")) if count]
            return f"draining: waiting for {' and '.join(left)}" if left else "draining"
        return "ready" if self.free else f"all {self.max_sessions} session slots in use"

    @property
    def weight_percent(self) -> int:
        """The agent's weight: the share of slots that sessions without a connection leave (module docstring)."""
        if self.draining or self.max_sessions <= 0:
            return 0
        if self.free == 0:
            return FULL_WEIGHT_PERCENT if self.unconnected < self.sessions else 0
        return max(round(100 * (self.max_sessions - self.unconnected) / self.max_sessions), FULL_WEIGHT_PERCENT)

    def agent_reply(self) -> str:
        """One agent-check line: `down` when unhealthy, else `up N%` (module docstring)."""
        return "down\n" if not self.healthy else f"up {self.weight_percent}%\n"

    def describe(self) -> dict:
        return {"ready": self.ready, "reason": self.reason, "sessions": self.sessions,
                "max_sessions": self.max_sessions, "free_sessions": self.free, "draining": self.draining,
                "jobs": self.jobs}


class Drainable(tp.Protocol):
    """A live client connection (a WebSocket, a WebRTC peer) as the drain sees it."""

    async def on_drain(self, seconds_left: float) -> None: ...

    async def drain_close(self, reason: str) -> None: ...


class Drain:
    """The end of a replica's life without a cut: it stops taking new sessions (`/ready` 503, agent weight 0, the
    engine refuses new sessions) and new jobs, tells every live client once how long it has, lets sessions play and
    jobs run until they end or `seconds` pass (HTTP-driven bar sessions go on as long as their client keeps asking;
    a job's result gets streaming.jobs.table.PICKUP_SECONDS to be fetched), then closes what is left (1001, with the
    reason) and sets `done`. `capacity()` is the replica's snapshot for /ready and the agent. Runs on the sidecar's
    loop."""

    def __init__(self, engine, seconds: float, jobs=None, registry=None) -> None:
        """`jobs`: the app's streaming.jobs.table.JobTable; `registry`: its streaming.sessions.registry
        SessionRegistry (both optional: a drain of sessions alone)."""
        self.engine = engine
        self.seconds = seconds
        self.jobs = jobs
        self.registry = registry
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

    def capacity(self) -> Capacity:
        """This replica now, as /ready and the agent-check tell it."""
        return Capacity(sessions=self.engine.sessions_open, max_sessions=self.engine.describe()["max_sessions"],
                        healthy=self.engine.health().ok, draining=self.active,
                        unconnected=self.registry.unconnected if self.registry is not None else 0,
                        jobs=self.jobs.outstanding() if self.jobs is not None else 0, drained=self.done.is_set())

    def start(self) -> None:
        """Begins the drain (once; later calls change nothing). Call on the sidecar's event loop."""
        if self.active:
            return
        self.active = True
        self.deadline = time.monotonic() + self.seconds
        self.engine.stop_admitting("this replica is draining: start the session on another one")
        capacity = self.capacity()
        logger.info("draining: no new sessions or jobs; %d open sessions and %d jobs have %.0f s",
                    capacity.sessions, capacity.jobs, self.seconds)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="drain")

    async def _run(self) -> None:
        try:
            for member in list(self._members):
                try:
                    await member.on_drain(self.seconds)
                except Exception as exc:  # that client is gone; the others still hear it
                    logger.debug("drain notice not delivered: %s", exc)
            while time.monotonic() < self.deadline:
                capacity = self.capacity()
                if capacity.sessions == 0 and capacity.jobs == 0:
                    break
                await asyncio.sleep(DRAIN_POLL_SECONDS)
            else:
                capacity = self.capacity()
                logger.info("drain time is up: closing %d connections (%d sessions, %d jobs left)",
                            len(self._members), capacity.sessions, capacity.jobs)
            for member in list(self._members):
                try:
                    await member.drain_close(f"server draining: the {self.seconds:.0f} s drain time is up; "
                                             "connect again to reach another replica")
                except Exception as exc:
                    logger.debug("drain close failed: %s", exc)
        finally:
            self.done.set()
            logger.info("drained")


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
