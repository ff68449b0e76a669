"""What a balancer sees of a replica: /ready and HAProxy's agent-check line follow the free session slots and the
drain, on a running sidecar with real WebSocket sessions."""

import json
import socket

import pytest
import requests
from websockets.sync.client import connect

from streaming.capacity import Capacity
from streaming.config import ServerConfig
from streaming.server import RunningServer
from tests.helpers import free_port, wait_until

START = {"type": "start", "mode": "rt", "params": {"styles": "jazz", "pace": "realtime", "max_decode_frames": 12}}


@pytest.mark.parametrize("sessions, healthy, draining, line", [
    (0, True, False, "up 100%\n"), (1, True, False, "up 50%\n"), (2, True, False, "up 1%\n"),
    (1, True, True, "drain\n"), (0, False, False, "down\n"), (0, False, True, "down\n")])
def test_agent_line_follows_free_slots(sessions, healthy, draining, line):
    capacity = Capacity(sessions=sessions, max_sessions=2, healthy=healthy, draining=draining)
    assert capacity.agent_reply() == line
    assert capacity.ready == (healthy and not draining and sessions < 2)


def agent_line(port: int) -> str:
    """What HAProxy's agent-check reads: connect, read one line, the replica closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        data = b""
        while chunk := sock.recv(64):
            data += chunk
    return data.decode("ascii")


def test_ready_and_agent_follow_sessions_and_drain(engine):
    agent_port = free_port()
    running = RunningServer(engine, ServerConfig(host="127.0.0.1", port=0, agent_port=agent_port)).start()
    base = f"http://127.0.0.1:{running.port}"
    try:
        assert requests.get(f"{base}/ready", timeout=5).status_code == 200
        assert agent_line(agent_port) == "up 100%\n"
        sockets = []
        for expected in ("up 50%\n", "up 1%\n"):
            ws = connect(f"ws://127.0.0.1:{running.port}/ws/jam")
            ws.send(json.dumps(START))
            assert json.loads(ws.recv(timeout=60))["type"] == "started"
            sockets.append(ws)
            assert wait_until(lambda line=expected: agent_line(agent_port) == line, 5), agent_line(agent_port)
        full = requests.get(f"{base}/ready", timeout=5)
        assert full.status_code == 503 and full.json()["reason"] == "all 2 session slots in use"
        assert requests.get(f"{base}/health", timeout=5).status_code == 200, "liveness is not readiness"
        sockets.pop().close()
        assert wait_until(lambda: requests.get(f"{base}/ready", timeout=5).status_code == 200, 5)
        drained = requests.post(f"{base}/admin/drain", timeout=5)
        assert drained.status_code == 200 and drained.json()["draining"] is True
        assert requests.get(f"{base}/ready", timeout=5).json() == {
            "ready": False, "reason": "draining", "sessions": 1, "max_sessions": 2, "free_sessions": 1,
            "draining": True}
        assert agent_line(agent_port) == "drain\n"
        sockets[0].send(json.dumps({"type": "ping"}))
        assert any(json.loads(sockets[0].recv(timeout=30))["type"] == "pong" for _ in range(5)), "the open jam goes on"
        sockets[0].close()
    finally:
        running.stop()


def test_drain_needs_the_token_when_one_is_set(engine):
    running = RunningServer(engine, ServerConfig(host="127.0.0.1", port=0, token="s3cret")).start()
    base = f"http://127.0.0.1:{running.port}"
    try:
        assert requests.post(f"{base}/admin/drain", timeout=5).status_code == 401
        assert requests.get(f"{base}/ready", timeout=5).status_code == 200
        assert requests.post(f"{base}/admin/drain", headers={"Authorization": "Bearer s3cret"},
                             timeout=5).status_code == 200
        assert requests.get(f"{base}/ready", timeout=5).status_code == 503
    finally:
        running.stop()
