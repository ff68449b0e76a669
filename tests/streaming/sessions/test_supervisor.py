"""The session supervisor's guarantees under any interleaving of what clients, the engine and the replica do.

Hypothesis drives a few connections' supervisors (streaming.sessions.supervisor) over the real session registry and the
real chunk pump, with a fake engine whose blocking calls run only when the test says (so an open or a restart can
be overtaken by a drop, a stop, a cancel or a drain) and whose chunks arrive or fail when the test says. Whatever
happens: a restart keeps the session (and its slot), every slot comes back exactly once, every future the engine
handed out resolves, and no task outlives its connection.
"""

import asyncio
import collections
import concurrent.futures
import typing as tp
from dataclasses import dataclass

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.api import CapacityError, SessionClosed
from streaming.sessions.pump import Pacer
from streaming.sessions.registry import SessionError, SessionRegistry
from streaming.sessions.supervisor import Phase, Recovery, Supervisor
from streaming.sessions.tasks import Tasks

SLOTS = 2
CONNECTIONS = 2


class GatedPool(concurrent.futures.Executor):
    """The blocking pool, run one job at a time when the test says (`run_one`)."""

    def __init__(self) -> None:
        self.queue: collections.deque = collections.deque()

    def submit(self, fn, *args, **kwargs) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.queue.append((future, fn, args, kwargs))
        return future

    def run_one(self) -> None:
        if not self.queue:
            return
        future, fn, args, kwargs = self.queue.popleft()
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)


@dataclass
class FakeChunk:
    index: int
    seconds: float = 0.01
    start_seconds: float = 0.0


class FakeSession:
    def __init__(self, engine: "FakeEngine") -> None:
        self.engine = engine
        self.closes = 0
        self.pending: list[concurrent.futures.Future] = []
        self.index = 0

    def next_chunk(self, deadline=None) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.engine.futures.append(future)
        if self.closes:
            future.set_exception(SessionClosed("the session ended"))
        else:
            self.pending.append(future)
        return future

    def restart(self, seed: int) -> None:
        if self.closes:
            raise SessionClosed("the session ended")
        if self.engine.restart_fails:
            raise RuntimeError("the engine is shutting down")
        self.index = 0

    def close(self) -> None:
        self.closes += 1
        self.engine.open.discard(self)
        for future in self.pending:
            if not future.done():
                future.set_exception(SessionClosed("the session ended"))

    def settle(self, fail: bool) -> bool:
        """Resolves the oldest chunk still pending; False when none is."""
        self.pending = [future for future in self.pending if not future.done()]
        if not self.pending:
            return False
        future = self.pending.pop(0)
        if fail:
            future.set_exception(RuntimeError("generation failed"))
        else:
            future.set_result(FakeChunk(self.index))
            self.index += 1
        return True


class FakeEngine:
    def __init__(self) -> None:
        self.open: set[FakeSession] = set()
        self.sessions: list[FakeSession] = []
        self.futures: list[concurrent.futures.Future] = []
        self.restart_fails = False

    def open_session(self, settings, seed) -> FakeSession:
        if len(self.open) >= SLOTS:
            raise CapacityError(SLOTS)
        session = FakeSession(self)
        self.open.add(session)
        self.sessions.append(session)
        return session

    def describe(self) -> dict:
        return {"name": "fake"}


class FakeRecording:
    ended_at = None

    def add(self, chunk) -> None:
        pass

    def restarted(self, seed: int) -> None:
        pass


class FakeStore:
    def start(self, session_id, kind, seed, model) -> FakeRecording:
        return FakeRecording()

    def get(self, session_id) -> None:
        return None

    def ended(self, recording) -> None:
        recording.ended_at = 0.0


class Client:
    """A connection as a shell would drive its supervisor: start or attach only while it has no session, and
    after a failure restart on the slot, then play."""

    def __init__(self, engine: FakeEngine, pool: GatedPool, registry: SessionRegistry) -> None:
        self.tasks = Tasks()
        self.supervisor = Supervisor(engine, pool, registry, "rt", owner=self, tasks=self.tasks)
        self.supervisor.pumped(self.deliver, self.failed)
        self.starting: tp.Optional[asyncio.Task] = None
        self.wants = False  # the client started or attached a session and has not stopped it
        self.recoveries: list[Recovery] = []

    async def deliver(self, chunk) -> None:
        pass

    async def failed(self, exc: Exception) -> None:
        before = self.supervisor.session

        async def tell(restarting: bool) -> None:
            await asyncio.sleep(0)

        outcome = await self.supervisor.recover(tell)
        self.recoveries.append(outcome.recovery)
        if outcome.recovery is Recovery.RESTARTED:
            assert self.supervisor.session is before, "a restart must keep the session, and its slot"
            self.supervisor.play()

    def idle(self) -> bool:
        return self.supervisor.phase is Phase.IDLE and (self.starting is None or self.starting.done())

    async def start(self) -> None:
        try:
            await self.supervisor.start(object(), 1, Pacer("asap"))
        except (CapacityError, SessionClosed):
            pass

    async def end(self, keep: bool) -> None:
        """The connection ends (as Connection.run's finally does)."""
        self.supervisor.closed = True
        await self.tasks.close()
        if self.starting is not None:
            self.starting.cancel()
            await asyncio.gather(self.starting, return_exceptions=True)
        await self.supervisor.finish(keep=keep)


OPS = st.one_of(
    st.tuples(st.just("start"), st.integers(0, CONNECTIONS - 1)),
    st.tuples(st.just("attach"), st.integers(0, CONNECTIONS - 1)),
    st.tuples(st.just("engine"), st.just(0)),
    st.tuples(st.just("chunk"), st.integers(0, SLOTS)),
    st.tuples(st.just("fail"), st.integers(0, SLOTS)),
    st.tuples(st.just("stop"), st.integers(0, CONNECTIONS - 1)),
    st.tuples(st.just("drop"), st.integers(0, CONNECTIONS - 1)),
    st.tuples(st.just("close"), st.integers(0, CONNECTIONS - 1)),
    st.tuples(st.just("cancel"), st.integers(0, CONNECTIONS - 1)),
    st.tuples(st.just("drain"), st.just(0)),
    st.tuples(st.just("engine_down"), st.booleans()),
)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def play(ops: list) -> None:
    engine, pool = FakeEngine(), GatedPool()
    registry = SessionRegistry(resume_seconds=1000.0, recordings=FakeStore())
    clients = [Client(engine, pool, registry) for _ in range(CONNECTIONS)]
    for op, arg in ops:
        client = clients[arg % CONNECTIONS] if isinstance(arg, int) and not isinstance(arg, bool) else None
        if op == "start" and client.idle():
            client.wants = True
            client.starting = asyncio.get_running_loop().create_task(client.start())
        elif op == "attach" and client.idle():
            held = [jam for jam in registry._jams.values() if jam.owner is None]
            if held:
                try:
                    client.supervisor.attach(held[0].session_id, Pacer("asap"))
                    client.wants = True
                    client.supervisor.play()
                except SessionError:
                    pass
        elif op == "engine":
            pool.run_one()
        elif op in ("chunk", "fail"):
            live = [session for session in engine.sessions if not session.closes]
            if live:
                live[arg % len(live)].settle(fail=op == "fail")
        elif op == "stop":
            client.wants = False
            await client.supervisor.end()
        elif op in ("drop", "close"):
            await client.end(keep=op == "drop")
            clients[arg % CONNECTIONS] = Client(engine, pool, registry)  # the client connects again
        elif op == "cancel" and client.starting is not None:
            client.starting.cancel()
        elif op == "drain":
            await registry.on_drain(1.0)
            await registry.drain_close("drained")
        elif op == "engine_down":
            engine.restart_fails = arg
        await settle()
        for each in clients:  # the phase is the one answer to "is a session playing"
            supervisor = each.supervisor
            playing = supervisor.phase in (Phase.PLAYING, Phase.RESTARTING)
            assert (supervisor.session is not None) == playing == (supervisor.jam is not None), supervisor.phase
            assert each.wants or supervisor.phase is Phase.IDLE, "a session plays that its client stopped"
            if playing:
                assert registry.get(supervisor.jam.session_id) is supervisor.jam
                assert supervisor.jam.owner is each
    # every connection ends, the blocking pool finishes what it was given, the server stops
    for client in clients:
        await client.end(keep=False)
    while pool.queue:
        pool.run_one()
        await settle()
    registry.close()
    await settle()
    assert engine.open == set(), "a slot was never given back"
    assert [session.closes for session in engine.sessions] == [1] * len(engine.sessions), "closed more than once"
    assert all(future.done() for future in engine.futures), "a chunk future never resolved"
    assert registry._jams == {}
    assert asyncio.all_tasks() == {asyncio.current_task()}, "a task outlived its connection"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, max_size=40))
@example([("start", 0), ("stop", 0), ("engine", 0)])  # stopped while the engine opens it
@example([("start", 0), ("drop", 0), ("engine", 0)])  # the connection ends while the engine opens it
@example([("start", 0), ("cancel", 0), ("engine", 0)])
@example([("start", 0), ("engine", 0), ("fail", 0), ("stop", 0), ("engine", 0)])  # stopped while it restarts
@example([("start", 0), ("engine", 0), ("fail", 0), ("drop", 0), ("engine", 0), ("attach", 1)])
@example([("start", 0), ("engine", 0), ("drop", 0), ("attach", 1), ("engine_down", True), ("fail", 0),
          ("engine", 0), ("start", 1), ("engine", 0)])  # a resumed session whose restart fails; a new start
@example([("start", 0), ("engine", 0), ("drop", 0), ("drain", 0), ("attach", 1)])
def test_every_slot_comes_back_and_every_future_resolves(ops):
    asyncio.run(play(ops))


def test_a_restart_keeps_the_slot_on_a_full_server():
    """Both slots taken; one session fails: it goes on, restarted on its own slot (never reopened)."""
    asyncio.run(play([("start", 0), ("engine", 0), ("start", 1), ("engine", 0), ("fail", 0), ("engine", 0),
                      ("chunk", 0)]))

    async def scenario() -> None:
        engine, pool = FakeEngine(), GatedPool()
        registry = SessionRegistry(resume_seconds=1000.0, recordings=FakeStore())
        first, second = Client(engine, pool, registry), Client(engine, pool, registry)
        for client in (first, second):
            client.starting = asyncio.get_running_loop().create_task(client.start())
            await settle()
            pool.run_one()
            await settle()
        assert len(engine.open) == SLOTS
        engine.sessions[0].settle(fail=True)
        await settle()
        pool.run_one()  # the restart
        await settle()
        assert first.recoveries == [Recovery.RESTARTED] and first.supervisor.phase is Phase.PLAYING
        assert engine.sessions[0] in engine.open and len(engine.sessions) == SLOTS
        for client in (first, second):
            await client.end(keep=False)
        assert engine.open == set()

    asyncio.run(scenario())


class Listener:
    """A connection as a transport binds it to the session's pump: /ws/jam's socket paced by a Pacer, or a WebRTC
    peer pushing PCM into its track (TrackPace); `got` records the chunks delivered to it."""

    def __init__(self, engine: FakeEngine, pool: GatedPool, registry: SessionRegistry, transport: str) -> None:
        from streaming.formats import OpusEncoder
        from streaming.webrtc.track import SessionTrack, TrackPace

        self.tasks = Tasks()
        self.kind = "rt" if transport == "jam" else "webrtc"
        self.supervisor = Supervisor(engine, pool, registry, self.kind, owner=self, tasks=self.tasks)
        self.supervisor.pumped(self.deliver, self.failed)
        self.track = SessionTrack(OpusEncoder(), lambda count: None, lambda silence: None)
        self.pace = Pacer("realtime") if transport == "jam" else TrackPace(self.track)
        self.got: list[int] = []

    async def deliver(self, chunk) -> None:
        import numpy as np

        self.got.append(chunk.index)
        self.track.push(np.zeros((round(48000 * chunk.seconds), 2), dtype="<i2"))

    async def failed(self, exc: Exception) -> None:
        raise AssertionError(f"no chunk fails here: {exc}")

    async def drop(self) -> None:
        """The connection goes away without `stop` (as Connection.run's and Peer.close's ends do)."""
        self.supervisor.closed = True
        await self.tasks.close()
        await self.supervisor.finish(keep=True)


def test_the_one_pump_carries_the_chunk_in_the_making_across_a_drop():
    """/ws/jam and a WebRTC peer alike: the registered session's one pump keeps the chunk in the making when the
    connection drops, and the connection that attaches gets that very request's chunk, same index, nothing asked
    for twice; the lead measured before the drop goes on."""
    async def scenario(transport: str) -> None:
        engine, pool = FakeEngine(), GatedPool()
        registry = SessionRegistry(resume_seconds=1000.0, recordings=FakeStore())
        first = Listener(engine, pool, registry, transport)
        starting = asyncio.get_running_loop().create_task(first.supervisor.start(object(), 1, first.pace))
        await settle()
        pool.run_one()
        jam = await starting
        session, pump = engine.sessions[0], jam.pump
        await settle()
        assert session.settle(fail=False)  # chunk 0 arrives and is delivered
        await settle()
        assert first.got == [0] and len(engine.futures) == 2, "chunk 1 is in the making"
        in_the_making = engine.futures[1]
        lead = pump.lead.seconds

        await first.drop()
        assert registry.held == 1 and not in_the_making.done()
        assert jam.pump is pump and pump.sent_until == 1 and pump.replay_from(None) == []

        second = Listener(engine, pool, registry, transport)
        assert second.supervisor.attach(jam.session_id, second.pace) is jam
        assert second.pace.lead is pump.lead and pump.lead.seconds == lead
        second.supervisor.play()
        await settle()
        assert len(engine.futures) == 2, "the resumed connection asked for the chunk in the making again"
        assert session.settle(fail=False)
        await settle()
        assert in_the_making.done() and second.got == [1] and first.got == [0]
        assert len(engine.futures) == 3 and pump.sent_until == 2
        await second.supervisor.end()
        await second.tasks.close()
        assert engine.open == set() and all(future.done() for future in engine.futures)

    for transport in ("jam", "webrtc"):
        asyncio.run(scenario(transport))
