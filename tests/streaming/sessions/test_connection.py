"""Sidecar liveness with real WebSocket clients: slots at session start, idle and frozen clients, slow readers,
recovery after a generation failure, and health that tells the truth."""

import concurrent.futures
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from engine.config import EngineConfig
from streaming.app.config import ServerConfig
from streaming.lyria import protocol as lp
from tests.support import ROOT
from tests.support.helpers import wait_until
from tests.support.jam_client import START, messages_until, next_of, run_seed_client, seed_client_script
from tests.support.servers import running_server, start_server, ws_url


@pytest.fixture(scope="module")
def server_config() -> dict:
    # a frozen client's connection is dropped by the ping timeout; its session is then held for a resume
    # (streaming.sessions.registry) for resume_seconds before the slot comes back
    return {"max_connections": 6, "idle_seconds": 1.5, "ping_interval": 1, "ping_timeout": 1, "resume_seconds": 2}


def health(server) -> dict:
    return requests.get(f"http://127.0.0.1:{server.port}/health", timeout=5).json()


def assert_closed(ws, code: int, reason: str) -> None:
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=5)
    assert ws.close_code == code and reason in ws.close_reason


def test_idle_sockets_take_no_slot_and_are_closed_with_a_reason(server):
    idle = [connect(ws_url(server)) for _ in range(4)]  # more than the 2 session slots
    try:
        with connect(ws_url(server)) as player:
            player.send(json.dumps(START))
            assert next_of(player, "chunk")["type"] == "chunk"
        for ws in idle:
            assert_closed(ws, 1008, "idle: no session started within 1.5 s")
    finally:
        for ws in idle:
            ws.close()


def test_connections_have_their_own_cap(server):
    sockets = [connect(ws_url(server)) for _ in range(6)]
    try:
        with connect(ws_url(server)) as extra:
            assert_closed(extra, 1013, "too many connections (limit 6)")
    finally:
        for ws in sockets:
            ws.close()


def test_the_seed_client_over_the_limit_reads_the_error(server, tmp_path):
    with connect(ws_url(server)) as first, connect(ws_url(server)) as second:
        for ws in (first, second):
            ws.send(json.dumps(START))
            next_of(ws, "chunk")
        source = seed_client_script(ws_url(server), tmp_path)
        result = subprocess.run([sys.executable, str(source)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr  # it read the error and left its loop, no ConnectionClosedError
    assert "Traceback" not in result.stderr


FROZEN_CLIENT = textwrap.dedent("""
    import json, sys
    from websockets.sync.client import connect
    with connect(sys.argv[1], max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "params": {"styles": "dub", "pace": "asap", "max_decode_frames": 10}}))
        while True:
            if json.loads(ws.recv())["type"] == "chunk":
                print("chunk", flush=True)
""")


def test_a_frozen_client_frees_its_slot(server, tmp_path):
    script = tmp_path / "frozen.py"
    script.write_text(FROZEN_CLIENT)
    process = subprocess.Popen([sys.executable, str(script), ws_url(server)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().startswith("chunk")
        assert health(server)["sessions"] == 1
        os.kill(process.pid, signal.SIGSTOP)  # the process stops; its socket stays open
        frozen = time.monotonic()
        assert wait_until(lambda: health(server)["sessions"] == 0, 15), "the frozen client still holds its slot"
        assert time.monotonic() - frozen < 15
    finally:
        process.kill()
        process.wait()


class PumpRecord:
    """What a session's pump does, as it does it: each chunk it asks of the engine (LiveSession.next_chunk) with
    the sends finished by then, and each send it begins and finishes (the delivery every ChunkPump is bound
    to through `bind`), with how many asked chunks were still in the making when the send began."""

    def __init__(self, monkeypatch) -> None:
        from engine.work.session import LiveSession
        from streaming.sessions.pump import ChunkPump

        self.asked: list[concurrent.futures.Future] = []
        self.asks: list[tuple[int, int]] = []  # (chunks asked so far, sends finished then), one per ask
        self.begun = self.finished = 0
        self.making_at_begin = 0  # of the latest send
        next_chunk, bind = LiveSession.next_chunk, ChunkPump.bind

        def asking(session, deadline=None):
            future = next_chunk(session, deadline)
            self.asked.append(future)
            self.asks.append((len(self.asked), self.finished))
            return future

        def binding(pump, pace, deliver, on_error, tasks):
            async def send(chunk) -> None:
                self.making_at_begin = sum(not future.done() for future in self.asked)
                self.begun += 1
                try:
                    await deliver(chunk)
                finally:
                    self.finished += 1

            bind(pump, pace, send, on_error, tasks)

        monkeypatch.setattr(LiveSession, "next_chunk", asking)
        monkeypatch.setattr(ChunkPump, "bind", binding)

    def stalled(self) -> bool:
        """A send is under way and stays so while the chunk that was in the making when it began is made, and no
        chunk is asked beyond it: the pump waits on the socket, with one chunk ready beside the one being written."""
        return (self.begun == self.finished + 1 and self.making_at_begin > 0 and len(self.asked) == self.begun + 1
                and all(future.done() for future in self.asked))


def test_a_slow_reader_pauses_generation(engine, monkeypatch):
    """A client that reads nothing stalls the pump at its send, and with it generation: the pump is seen waiting
    on a send with the next chunk made, and no chunk was ever asked for beyond the one in the making beside the
    one being written (the backpressure the README states), at the stall or before it. Pings are off on both
    sides: a ping timeout would drop such a reader (the frozen client's test), and would hide the backpressure."""
    record = PumpRecord(monkeypatch)
    with running_server(engine, ping_interval=0) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        with connect(ws_url(server), sock=sock, max_size=None, max_queue=1, ping_interval=None) as ws:
            ws.send(json.dumps({**START, "params": {**START["params"], "max_decode_frames": 50}}))  # reads nothing
            assert wait_until(record.stalled, 90, interval=0.05), \
                f"no send was held up by the reader: {record.begun} begun, {record.finished} finished, " \
                f"{len(record.asked)} chunks asked"
    assert record.finished >= 1  # some chunks went out before the socket's buffers filled
    ahead = [(asked, finished) for asked, finished in record.asks if asked > finished + 2]
    assert not ahead, f"generation went on for a client that reads nothing: (asked, sent) {ahead}"


def test_a_jam_session_goes_on_after_a_generation_error(server, marker):
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({**START, "params": {**START["params"], "styles": f"{marker} dub",
                                                 "style_weights": "1"}}))
        told = messages_until(ws, lambda m: m.get("status") == "restarting" or m["type"] == "error")[-1]
        assert told["type"] == "status"  # not an error: the session goes on
        assert "generation failed" in told["error"] and "injected transient failure" in told["error"]
        assert next_of(ws, "status")["status"] == "restarted"
        assert next_of(ws, "chunk")["metadata"]["chunk_index"] == 0
        ws.send(json.dumps({"type": "update", "temperature": 0.8}))
        assert next_of(ws, "status")["status"] == "updated"
    assert wait_until(lambda: health(server)["sessions"] == 0, 5)


def test_a_lyria_session_goes_on_after_a_generation_error(server, marker):
    """As on every transport, a fresh context on the slot; the first chunk after it says what happened."""
    with connect(ws_url(server, lp.PATH), max_size=None) as ws:
        ws.send(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
        assert set(json.loads(ws.recv(timeout=10))["setupComplete"]) == {"sessionId"}
        ws.send(json.dumps({"clientContent": {"weightedPrompts": [{"text": f"{marker} techno", "weight": 1}]}}))
        ws.send(json.dumps({"playbackControl": "PLAY"}))
        first, second = (json.loads(ws.recv(timeout=60)) for _ in range(2))
    assert "generation failed" in first["warning"] and "injected transient failure" in first["warning"]
    assert "fresh context" in first["warning"] and "warning" not in second
    assert first["serverContent"]["audioChunks"][0]["mimeType"] == lp.MIME_TYPE
    assert wait_until(lambda: health(server)["sessions"] == 0, 5)


def test_health_is_503_when_the_engine_cannot_take_work(demo_dir):
    from engine.config import EngineConfig
    from engine.core import Engine

    engine = Engine.load(demo_dir, device="cpu", config=EngineConfig(max_sessions=1))
    running = start_server(engine)
    try:
        assert requests.get(f"http://127.0.0.1:{running.port}/health", timeout=5).status_code == 200
        engine.lm_worker.close()
        response = requests.get(f"http://127.0.0.1:{running.port}/health", timeout=5)
        assert response.status_code == 503
        assert response.json()["status"] == "unhealthy" and "shut down" in response.json()["problem"]
        with connect(f"ws://127.0.0.1:{running.port}/ws/jam") as ws:
            ws.send(json.dumps(START))
            assert "could not start a session" in next_of(ws, "error", timeout=10)["error"]
    finally:
        running.stop()
        engine.close()


def documented_defaults() -> dict[str, str]:
    """docs/configuration.md's table: each environment variable and the default it states (`A` / `B` rows give one
    default to each name)."""
    table = (ROOT / "docs" / "configuration.md").read_text()
    defaults = {}
    for names, values in re.findall(r"^\| (`[A-Z_]+`(?: / `[A-Z_]+`)*) \| (`[^`|]+`(?: / `[^`|]+`)*) \|", table, re.M):
        for name, value in zip(re.findall(r"`([^`]+)`", names), re.findall(r"`([^`]+)`", values), strict=True):
            defaults[name] = value
    return defaults


def test_the_defaults_are_the_documented_ones():
    """What the server and the engine use with nothing set is what docs/configuration.md says they use."""
    documented = documented_defaults()
    server, engine = ServerConfig.from_env({}), EngineConfig.from_env({})
    used = {"JAM_PORT": server.port, "JAM_MAX_SESSIONS": engine.max_sessions,
            "JAM_MAX_CONNECTIONS": server.max_connections, "JAM_IDLE_SECONDS": server.idle_seconds,
            "JAM_PING_INTERVAL": server.ping_interval, "JAM_PING_TIMEOUT": server.ping_timeout,
            "JAM_WEBRTC_CONNECT_SECONDS": server.webrtc_connect_timeout,
            "MUSICGEN_WEIGHT_FORMAT": engine.weight_format, "MUSICGEN_COMPILE_STEP": engine.compile_step,
            "JAM_DRAIN_SECONDS": server.drain_seconds, "JAM_BLOCKING_THREADS": server.blocking_threads,
            "JAM_RESUME_SECONDS": server.resume_seconds, "JAM_RECORDING_MINUTES": server.recording_minutes,
            "JAM_RECORDING_KEEP_SECONDS": server.recording_keep_seconds, "JAM_RECORDINGS": server.max_recordings,
            "COG_MAX_CONCURRENCY": engine.max_predictions}
    for name, value in used.items():
        assert type(value)(documented[name]) == value, f"{name}: the docs say {documented[name]}, the code {value}"
    assert ServerConfig.from_env({"JAM_IDLE_SECONDS": "5", "JAM_MAX_CONNECTIONS": "3"}).idle_seconds == 5
    with pytest.raises(ValueError, match="JAM_PING_TIMEOUT must be a number"):
        ServerConfig.from_env({"JAM_PING_TIMEOUT": "soon"})


def test_run_seed_client_helper_still_plays(server, tmp_path):
    assert len(run_seed_client(ws_url(server), tmp_path)) == 2
