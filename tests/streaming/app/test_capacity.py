"""What a balancer sees of a replica: /ready and HAProxy's agent-check line follow the free session slots, the
sessions no connection carries and the drain, on a running sidecar with real WebSocket and HTTP sessions; the drain
waits for running jobs and HTTP-driven bar sessions."""

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import typing as tp
from pathlib import Path

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from streaming.app.capacity import Capacity
from streaming.lyria import protocol as lp
from tests.support import ROOT
from tests.support.helpers import free_port, sine_wav, wait_until
from tests.support.servers import start_server

START = {"type": "start", "mode": "rt", "params": {"styles": "jazz", "pace": "realtime", "max_decode_frames": 12}}


def own_engine(demo_dir, slots: int):
    """An engine of its own: a drain ends a replica's admissions for good, so the shared one is never drained."""
    from engine.config import EngineConfig
    from engine.core import Engine

    return Engine.load(demo_dir, device="cpu", config=EngineConfig(max_sessions=slots))


@pytest.fixture
def engine(demo_dir):
    own = own_engine(demo_dir, 2)
    yield own
    own.close()


@pytest.fixture
def roomy_engine(demo_dir):
    """Three slots: after two sessions one is still free, so a refusal there is the drain's, not the cap's."""
    own = own_engine(demo_dir, 3)
    yield own
    own.close()


@pytest.mark.parametrize("sessions, unconnected, healthy, draining, line", [
    (0, 0, True, False, "up 100%\n"),
    (1, 0, True, False, "up 100%\n"),  # HAProxy counts a WebSocket session's connection itself
    (1, 1, True, False, "up 50%\n"),  # a held (or WebRTC, or HTTP bar) session: no connection shows it
    (2, 0, True, False, "up 1%\n"),  # full: ranked last, yet reachable for the protocol's own refusal
    (2, 1, True, False, "up 1%\n"),
    (2, 2, True, False, "up 0%\n"),  # full with no connection: leastconn would rank it first at any weight
    (1, 0, True, True, "up 0%\n"),  # draining: out of the balance, never HAProxy's sticky `drain`
    (0, 0, False, False, "down\n"), (0, 0, False, True, "down\n")])
def test_agent_line_follows_free_slots(sessions, unconnected, healthy, draining, line):
    capacity = Capacity(sessions=sessions, max_sessions=2, healthy=healthy, draining=draining,
                        unconnected=unconnected)
    assert capacity.agent_reply() == line
    assert capacity.ready == (healthy and not draining and sessions < 2)


def agent_line(port: int) -> str:
    """What HAProxy's agent-check reads: connect, read one line, the replica closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        data = b""
        while chunk := sock.recv(64):
            data += chunk
    return data.decode("ascii")


def start_jam(port: int):
    ws = connect(f"ws://127.0.0.1:{port}/ws/jam")
    ws.send(json.dumps(START))
    assert json.loads(ws.recv(timeout=60))["type"] == "started"
    return ws


def drop(ws) -> None:
    """The network goes: no closing handshake, so the session is held for a resume (no connection carries it)."""
    ws.socket.shutdown(socket.SHUT_RDWR)
    ws.socket.close()


def test_ready_and_agent_follow_sessions_and_drain(engine):
    agent_port = free_port()
    running = start_server(engine, agent_port=agent_port)
    base = f"http://127.0.0.1:{running.port}"

    def agent_says(line: str) -> bool:
        return wait_until(lambda: agent_line(agent_port) == line, 5)

    try:
        assert requests.get(f"{base}/ready", timeout=5).status_code == 200
        assert agent_line(agent_port) == "up 100%\n"
        first = start_jam(running.port)
        assert agent_says("up 100%\n"), "a WebSocket session is HAProxy's to count: the weight stays"
        second = start_jam(running.port)
        assert agent_says("up 1%\n"), agent_line(agent_port)
        full = requests.get(f"{base}/ready", timeout=5)
        assert full.status_code == 503 and full.json()["reason"] == "all 2 session slots in use"
        assert requests.get(f"{base}/health", timeout=5).status_code == 200, "liveness is not readiness"
        drop(second)
        assert wait_until(lambda: running.registry.held == 1, 5)
        assert agent_says("up 1%\n"), "still full: the held session keeps its slot"
        first.close()
        assert agent_says("up 50%\n"), "one slot is taken by a session no connection shows"
        drop(start_jam(running.port))
        assert agent_says("up 0%\n"), "full and no connection: out of the balance"
        running.loop.call_soon_threadsafe(running.registry.close)  # the held ones end
        assert wait_until(lambda: engine.sessions_open == 0, 5) and agent_says("up 100%\n")
        sockets = [start_jam(running.port)]
        drained = requests.post(f"{base}/admin/drain", timeout=5)
        assert drained.status_code == 200 and drained.json()["draining"] is True
        ready = requests.get(f"{base}/ready", timeout=5).json()
        assert 0 < ready.pop("seconds_left") <= 300
        assert ready == {"ready": False, "reason": "draining: waiting for 1 session", "sessions": 1,
                         "max_sessions": 2, "free_sessions": 1, "draining": True, "jobs": 0}
        assert agent_line(agent_port) == "up 0%\n"
        sockets[0].send(json.dumps({"type": "ping"}))
        assert any(json.loads(sockets[0].recv(timeout=30))["type"] == "pong" for _ in range(5)), "the open jam goes on"
        sockets[0].close()
    finally:
        running.stop()


def test_drain_needs_the_token_when_one_is_set(engine):
    running = start_server(engine, token="s3cret")
    base = f"http://127.0.0.1:{running.port}"
    try:
        assert requests.post(f"{base}/admin/drain", timeout=5).status_code == 401
        assert requests.get(f"{base}/ready", timeout=5).status_code == 200
        assert requests.post(f"{base}/admin/drain", headers={"Authorization": "Bearer s3cret"},
                             timeout=5).status_code == 200
        assert requests.get(f"{base}/ready", timeout=5).status_code == 503
    finally:
        running.stop()


def test_drain_waits_for_running_jobs_and_http_bar_sessions(engine, tmp_path):
    """A job on the app's own table (where the gary plugins' and /generate's jobs run) and a bar session an HTTP
    client drives keep the drain open, and /ready says so; the session stays held between its client's requests
    past its resume window while the replica drains; new /generate jobs are refused; the drain ends when both are
    over, with the job's result still there to fetch."""
    resume = 1.0
    running = start_server(engine, resume_seconds=resume, drain_seconds=120)
    running.jobs.pickup_seconds = 1.0
    base = f"http://127.0.0.1:{running.port}"
    release = threading.Event()
    loop = sine_wav(tmp_path / "loop.wav", 2.0, rate=44100, channels=2).read_bytes()
    try:
        started = requests.post(f"{base}/jam/start", data={"bpm": "120"},
                                files={"loop_audio": ("loop.wav", loop, "audio/wav")}, timeout=60)
        assert started.status_code == 200, started.text
        sid = started.json()["session_id"]
        job_id = running.jobs.submit(lambda ctx: release.wait(60) and b"result", work_seconds=1.0)
        assert requests.post(f"{base}/admin/drain", timeout=5).json()["draining"] is True
        ready = requests.get(f"{base}/ready", timeout=5).json()
        assert ready["reason"] == "draining: waiting for 1 session and 1 job" and ready["jobs"] == 1

        refused = requests.post(f"{base}/generate", data={"bpm": "120"},
                                files={"loop_audio": ("loop.wav", loop, "audio/wav")}, timeout=30)
        assert refused.status_code == 503 and "draining" in refused.json()["detail"]

        polled_until = time.monotonic() + 4 * resume  # the client keeps asking: its session is not dropped
        while time.monotonic() < polled_until:
            answer = requests.get(f"{base}/jam/status", params={"session_id": sid}, timeout=10)
            assert answer.status_code == 200, answer.text
            time.sleep(resume / 4)
        chunk = requests.get(f"{base}/jam/next", params={"session_id": sid}, timeout=60)
        assert chunk.status_code == 200 and chunk.json()["chunk"]["index"] == 0
        assert not running.drain.done.is_set()

        # the client stops asking: its session ends one resume window later; the job still holds the drain
        assert wait_until(lambda: engine.sessions_open == 0, 5 * resume)
        assert requests.get(f"{base}/ready", timeout=5).json()["reason"] == "draining: waiting for 1 job"
        time.sleep(1.0)
        assert not running.drain.done.is_set(), "a running job keeps the drain open"
        release.set()
        assert wait_until(running.drain.done.is_set, 10)
        assert running.jobs.status(job_id).result == b"result", "the result waited for its client"
        assert requests.get(f"{base}/ready", timeout=5).json()["reason"] == "drained"
    finally:
        release.set()
        running.stop()


def messages_until(ws, predicate, timeout=30):
    """Reads JSON messages until one satisfies `predicate`; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = json.loads(ws.recv(timeout=deadline - time.monotonic()))
        if predicate(message):
            return message
    raise AssertionError("no such message in time")


def test_drain_tells_live_clients_refuses_new_ones_and_closes_at_the_deadline(roomy_engine):
    engine = roomy_engine
    running = start_server(engine, drain_seconds=4)
    base = f"ws://127.0.0.1:{running.port}"
    jam = connect(f"{base}/ws/jam")
    lyria = connect(f"{base}{lp.PATH}", max_size=None)
    try:
        jam.send(json.dumps(START))
        assert json.loads(jam.recv(timeout=60))["type"] == "started"
        lyria.send(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
        assert set(json.loads(lyria.recv(timeout=30))["setupComplete"]) == {"sessionId"}
        lyria.send(json.dumps({"clientContent": {"weightedPrompts": [{"text": "techno", "weight": 1}]}}))
        lyria.send(json.dumps({"playbackControl": "PLAY"}))
        messages_until(lyria, lambda m: "serverContent" in m)
        started = time.monotonic()
        answer = requests.post(f"http://127.0.0.1:{running.port}/admin/drain", timeout=5).json()
        assert answer["draining"] and answer["drained"] is False
        status = messages_until(jam, lambda m: m.get("status") == "draining")
        assert status["draining"] is True and status["seconds_left"] == 4
        assert "draining" in messages_until(lyria, lambda m: "warning" in m)["warning"]
        with connect(f"{base}/ws/jam") as late:  # a client that reaches a draining replica directly
            late.send(json.dumps(START))
            refused = json.loads(late.recv(timeout=30))
            assert refused["error"] == "concurrency_limit_reached" and refused["limit"] == 3
        messages_until(jam, lambda m: m.get("type") == "chunk", timeout=10)  # the jam plays on meanwhile
        for ws in (jam, lyria):
            with pytest.raises(ConnectionClosed):
                while time.monotonic() - started < 15:
                    ws.recv(timeout=15)
                raise AssertionError("still open 15 s after a 4 s drain")
            assert ws.close_code == 1001 and "drain time is up" in ws.close_reason
        assert 3.5 < time.monotonic() - started < 10
        assert wait_until(lambda: engine.sessions_open == 0 and engine.rows_in_use == 0, 5)
    finally:
        jam.close()
        lyria.close()
        running.stop()


@contextlib.contextmanager
def standalone_sidecar(venv_env, tmp_path, drain_seconds: int) -> tp.Iterator[tuple[subprocess.Popen, int, Path]]:
    """`python -m streaming.app.server` on a free port (process, port, its log); killed if still running after."""
    port = free_port()
    log = tmp_path / "sidecar.log"
    process = subprocess.Popen([sys.executable, "-m", "streaming.app.server"], cwd=ROOT, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, env=dict(venv_env, JAM_HOST="127.0.0.1", JAM_PORT=str(port),
                                                                  JAM_DRAIN_SECONDS=str(drain_seconds)))
    try:
        yield process, port, log
    except BaseException:
        print(log.read_text()[-4000:])
        raise
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_drains_then_the_standalone_sidecar_exits(venv_env, demo_dir, tmp_path):
    with standalone_sidecar(venv_env, tmp_path, drain_seconds=30) as (process, port, _):
        assert wait_until(lambda: _ready(port) or process.poll() is not None, 120), "sidecar did not start"
        assert process.poll() is None, "the sidecar exited (its port taken?)"
        ws = connect(f"ws://127.0.0.1:{port}/ws/jam")
        ws.send(json.dumps(START))
        assert json.loads(ws.recv(timeout=60))["type"] == "started"
        process.send_signal(signal.SIGTERM)
        assert messages_until(ws, lambda m: m.get("status") == "draining")["seconds_left"] == 30
        assert requests.get(f"http://127.0.0.1:{port}/ready", timeout=5).json()["reason"] == \
            "draining: waiting for 1 session"
        messages_until(ws, lambda m: m.get("type") == "chunk", timeout=10)
        assert process.poll() is None, "a live jam keeps the replica up"
        ws.send(json.dumps({"type": "stop"}))
        ws.close()
        assert process.wait(timeout=20) == 0, "the last session ended: the replica exits"


def test_a_sigterm_the_moment_the_sidecar_is_ready_drains_instead_of_killing_it(venv_env, demo_dir, tmp_path):
    """The SIGTERM handler is in place before the server answers: a client may open a session within the moment
    start() takes to see the server up, and a SIGTERM then must drain it (exit 0), not end the process (-15)."""
    with standalone_sidecar(venv_env, tmp_path, drain_seconds=5) as (process, port, log):
        deadline = time.monotonic() + 120
        while not _ready(port):  # polled tightly: the signal goes the moment the server answers
            assert process.poll() is None and time.monotonic() < deadline, "sidecar did not start"
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, "a SIGTERM right after start ended the sidecar instead of draining it"
        assert "draining" in log.read_text()


def _ready(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False
