"""The transports' shared lifecycle: the tasks a connection runs are held until they end and end with it, and
blocking engine calls have a pool of their own, so a WebRTC peer's Opus frames never wait behind them."""

import asyncio
import concurrent.futures
import gc
import json
import os
import threading
import time
import types
import weakref

from websockets.sync.client import connect

from engine.runtime.worker import EngineUnavailable
from engine.work.session import LiveSession
from streaming.app.config import ServerConfig
from streaming.jam.ws import JamConnection
from streaming.sessions.pump import ChunkPump, Pacer
from streaming.sessions.registry import SessionRegistry
from streaming.sessions.tasks import Tasks
from tests.support.jam_client import asap_start
from tests.support.servers import start_server
from tests.support.webrtc_client import JamClient


class FailingSession:
    """A session whose every chunk fails, as a session whose generation failed does."""

    def next_chunk(self, deadline=None) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_exception(RuntimeError("generation failed"))
        return future


def test_a_failure_report_is_held_while_it_runs_and_ends_with_the_connection():
    """The pump hands a failure to `on_error` as a task of its own. The event loop holds tasks only weakly: one
    that nothing else references (here it waits on a future only it knows) would be collected mid-flight."""
    async def scenario():
        tasks = Tasks()
        reporting = asyncio.Event()
        seen: dict = {}

        async def on_error(exc: Exception) -> None:
            seen["task"] = weakref.ref(asyncio.current_task())
            reporting.set()
            await asyncio.get_running_loop().create_future()

        async def send_chunk(chunk) -> None:
            raise AssertionError("no chunk can come")

        ChunkPump(FailingSession(), Pacer("asap"), send_chunk, on_error, tasks).start()
        await asyncio.wait_for(reporting.wait(), 5)
        gc.collect()
        report = seen["task"]()
        assert report is not None and not report.done(), "the failure report was collected while it ran"
        await tasks.close()
        assert report.cancelled()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(scenario())


class CountingSession:
    """Chunks 0, 1, 2, ... at once, each a plain object with an index."""

    def __init__(self) -> None:
        self.index = 0

    def next_chunk(self, deadline=None) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(types.SimpleNamespace(index=self.index, seconds=0.1, start_seconds=self.index * 0.1))
        self.index += 1
        return future


def test_stopping_lets_the_send_under_way_finish_and_skips_nothing():
    """A pump stopped while a chunk is being written lets the write end (a send cancelled midway leaves starlette's
    socket marked closed), starts no new one, and a restarted pump goes on with the next chunk."""
    async def scenario():
        tasks, release, writing, sent = Tasks(), asyncio.Event(), asyncio.Event(), []

        async def send_chunk(chunk) -> None:
            writing.set()
            await release.wait()  # a slow write
            sent.append(chunk.index)

        async def on_error(exc: Exception) -> None:
            raise AssertionError(exc)

        pump = ChunkPump(CountingSession(), Pacer("asap"), send_chunk, on_error, tasks)
        pump.start()
        await asyncio.wait_for(writing.wait(), 5)
        stopping = asyncio.get_running_loop().create_task(pump.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done(), "stop() did not wait for the write under way"
        release.set()
        await asyncio.wait_for(stopping, 5)
        assert sent == [0], "the write was cut, or a new one started while stopping"
        pump.start()
        await asyncio.sleep(0.05)
        await pump.stop()
        assert sent[:3] == [0, 1, 2], sent  # nothing skipped, nothing repeated
        await tasks.close()

    asyncio.run(scenario())


class FakeSocket:
    """Just enough of starlette's WebSocket for a connection: frames in from a queue, what it sends recorded."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.sent: list[dict] = []
        self.got = asyncio.Event()

    async def receive(self) -> dict:
        return await self.inbox.get()

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))
        self.got.set()

    async def send_bytes(self, data: bytes) -> None:
        pass

    async def close(self, code: int, reason: str) -> None:
        pass


def test_a_restart_under_way_ends_with_the_connection(engine, marker, monkeypatch):
    """The client leaves while its session restarts (the engine is slow to restart it): the restart's task is
    cancelled, the slot comes back at once, and no task of the connection outlives it."""
    entered, release = threading.Event(), threading.Event()
    real = LiveSession.restart

    def stuck_restart(self, seed):
        entered.set()
        release.wait(30)
        return real(self, seed)

    monkeypatch.setattr(LiveSession, "restart", stuck_restart)
    pool = concurrent.futures.ThreadPoolExecutor(2)

    async def scenario():
        ws = FakeSocket()
        config = ServerConfig(resume_seconds=0)  # the slot comes back with the connection, not after a window
        connection = JamConnection(ws, engine, config, pool, SessionRegistry.from_config(config), None)
        running = asyncio.create_task(connection.run())
        ws.inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(asap_start(f"{marker} dub"))})
        await asyncio.wait_for(asyncio.to_thread(entered.wait, 30), 35)
        assert ws.sent[-1]["status"] == "restarting" and engine.sessions_open == 1
        ws.inbox.put_nowait({"type": "websocket.disconnect"})
        await asyncio.wait_for(running, 5)
        left = asyncio.all_tasks() - {asyncio.current_task()}
        return left

    try:
        left = asyncio.run(scenario())
        assert left == set(), left
        assert engine.sessions_open == 0
    finally:
        release.set()
        pool.shutdown(wait=True)


def test_opus_frames_keep_coming_while_blocking_engine_calls_wait(engine, monkeypatch, loopback):
    """More sessions are being opened than the event loop's default executor has threads, and the engine never
    answers them: a WebRTC peer's 20 ms Opus frames go on regardless (they never queue behind those calls)."""
    default_threads = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default
    running = start_server(engine, blocking_threads=2)
    release = threading.Event()
    waiting: list[int] = []

    def stuck_open(settings, seed, **options):
        waiting.append(1)
        release.wait(30)
        raise EngineUnavailable("the engine never answered (test)")

    async def scenario():
        client = JamClient(f"http://127.0.0.1:{running.port}")
        track = await client.connect({"styles": "dub", "max_decode_frames": 25})
        for _ in range(25):
            await asyncio.wait_for(track.recv(), 10)
        monkeypatch.setattr(engine, "open_session", stuck_open)
        sockets = [await asyncio.to_thread(connect, f"ws://127.0.0.1:{running.port}/ws/jam")
                   for _ in range(default_threads + 2)]
        try:
            for ws in sockets:
                ws.send(json.dumps(asap_start("dub")))
            deadline = time.monotonic() + 10
            while len(waiting) < 2 and time.monotonic() < deadline:  # the blocking pool is full
                await asyncio.sleep(0.01)
            gaps, last = [], time.monotonic()
            for _ in range(100):  # two seconds of audio
                await asyncio.wait_for(track.recv(), 5)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()
        finally:
            release.set()
            for ws in sockets:
                ws.close()
            await client.close()
        return gaps

    try:
        gaps = asyncio.run(scenario())
    finally:
        release.set()
        running.stop()
    assert len(waiting) >= 2
    assert max(gaps) < 0.5, max(gaps)
