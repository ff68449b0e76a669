"""Replicas behind Debian's HAProxy with the project's own deploy/haproxy.cfg: new jams land by free slots, a full
fleet answers with the protocol's own error, a drained replica gets no new session and exits when its jams end, a
killed one gets none either, and predictions
queue for a free replica instead of meeting Cog's 409."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing as tp
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from websockets.sync.client import connect

from tests.support import ROOT
from tests.support.cog_server import CogServer
from tests.support.helpers import free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600),  # three sidecars start on two cores: 120 s each allowed
              pytest.mark.skipif(shutil.which("haproxy") is None and not os.environ.get("CI"),
                                 reason="Debian's haproxy is not installed (.ci/run installs it)")]
START = {"type": "start", "mode": "rt", "params": {"styles": "jazz", "pace": "realtime", "max_decode_frames": 12}}
AGENT_INTER = 1.0


class Sidecar:
    """A standalone sidecar process (its own engine, two session slots) with its agent-check port."""

    def __init__(self, env: dict, log_dir: Path, index: int) -> None:
        self.port, self.agent_port = free_port(), free_port()
        self.log = open(log_dir / f"sidecar{index}.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streaming.app.server"], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env=dict(env, JAM_HOST="127.0.0.1", JAM_PORT=str(self.port), JAM_AGENT_PORT=str(self.agent_port),
                     JAM_MAX_SESSIONS="2", JAM_REPLICA_ID=f"replica{index + 1}"))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def sessions(self) -> int:
        return requests.get(self.url("/health"), timeout=5).json()["sessions"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def start_haproxy(env: dict, jam: list, cog_ports: list[int], log_dir: Path) -> tuple[subprocess.Popen, int, int]:
    jam_port, cog_port = free_port(), free_port()
    variables = {"LB_HOST": "127.0.0.1", "LB_JAM_PORT": str(jam_port), "LB_COG_PORT": str(cog_port),
                 "AGENT_INTER": f"{round(AGENT_INTER * 1000)}ms"}
    for index in range(3):
        variables[f"REPLICA_{index + 1}"] = "127.0.0.1"
        variables[f"JAM_PORT_{index + 1}"] = str(jam[index].port if jam else free_port())
        variables[f"AGENT_PORT_{index + 1}"] = str(jam[index].agent_port if jam else free_port())
        variables[f"COG_PORT_{index + 1}"] = str(cog_ports[index])
    process = subprocess.Popen(["haproxy", "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
                               env=dict(env, **variables), stdout=open(log_dir / "haproxy.log", "wb"),
                               stderr=subprocess.STDOUT)
    listening = wait_until(lambda: process.poll() is not None or _accepts(cog_port), 10)
    if not listening or process.poll() is not None:
        raise RuntimeError(f"haproxy did not start:\n{(log_dir / 'haproxy.log').read_text()}")
    return process, jam_port, cog_port


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def stop_all(haproxy: tp.Optional[subprocess.Popen], replicas: list) -> None:
    if haproxy is not None:
        haproxy.terminate()
        haproxy.wait()
    for replica in replicas:
        replica.stop()


def start_session(lb_port: int):
    # the sessions play unread for seconds: an unbounded queue keeps the client reading, so its close completes
    ws = connect(f"ws://127.0.0.1:{lb_port}/ws/jam", open_timeout=10, max_queue=None)
    ws.send(json.dumps(START))
    return ws, json.loads(ws.recv(timeout=60))


@pytest.fixture
def fleet(venv_env, demo_dir, tmp_path):
    sidecars = [Sidecar(venv_env, tmp_path, index) for index in range(3)]
    haproxy = None
    try:
        for sidecar in sidecars:
            assert wait_until(lambda s=sidecar: _healthy(s.url("/health")), 120), "a sidecar did not start"
        haproxy, lb_port, _ = start_haproxy(venv_env, sidecars, [free_port() for _ in range(3)], tmp_path)
        time.sleep(3 * AGENT_INTER)  # the first health and agent checks
        yield sidecars, lb_port
    finally:
        stop_all(haproxy, sidecars)


def _healthy(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_sessions_land_by_free_slots_and_avoid_drained_and_dead_replicas(fleet):
    sidecars, lb_port = fleet

    def counts() -> list[int]:
        return [sidecar.sessions() if sidecar.process.poll() is None else None for sidecar in sidecars]

    sockets = []
    for _ in range(6):  # at the agents' pace: HAProxy weighs each start by the free slots last reported
        ws, first = start_session(lb_port)
        assert first["type"] == "started", first
        sockets.append(ws)
        time.sleep(1.5 * AGENT_INTER)
    assert counts() == [2, 2, 2]
    seventh, answer = start_session(lb_port)
    assert answer == {"type": "error", "error": "concurrency_limit_reached", "limit": 2}, "the protocol's refusal"
    seventh.close()
    for ws in sockets:
        ws.close()
    assert wait_until(lambda: counts() == [0, 0, 0], 5)
    time.sleep(2 * AGENT_INTER)

    kept, _ = start_session(lb_port)
    drained = counts().index(1)
    sidecars[drained].process.send_signal(signal.SIGTERM)  # a rolling update: drain, then exit
    assert wait_until(lambda: requests.get(sidecars[drained].url("/ready"), timeout=5).status_code == 503, 5)
    time.sleep(2 * AGENT_INTER)
    others = [i for i in range(3) if i != drained]
    landed = [start_session(lb_port) for _ in range(2)]
    assert all(first["type"] == "started" for _, first in landed)
    assert counts()[drained] == 1 and sum(counts()[i] for i in others) == 2, "no new session on a draining replica"

    killed, survivor = others
    sidecars[killed].process.send_signal(signal.SIGKILL)
    sidecars[killed].process.wait()
    time.sleep(2 * 2 + AGENT_INTER)  # health checks: inter 2 s, fall 2
    before = counts()[survivor]
    started = 0
    while True:
        ws, first = start_session(lb_port)
        ws.close() if first["type"] != "started" else landed.append((ws, first))
        if first["type"] != "started":
            assert first["error"] == "concurrency_limit_reached"
            break
        started += 1
    assert started == 2 - before and counts()[survivor] == 2, "new sessions go to the live replica"
    assert counts()[drained] == 1
    kinds = [json.loads(kept.recv(timeout=30))["type"] for _ in range(3)]
    assert "chunk" in kinds, f"the jam on the drained replica plays on: {kinds}"
    assert sidecars[drained].process.poll() is None, "a draining replica stays up while its jam plays"
    for ws, _ in landed:
        ws.close()
    kept.close()
    assert sidecars[drained].process.wait(timeout=20) == 0, "the drained replica exits when its last jam ends"


def test_requests_naming_a_session_reach_the_replica_that_holds_it(fleet):
    """A session dropped without a closing handshake is resumed through the balancer (the id in the URL), and its
    metadata and recording are read through it: every request lands on the replica holding the session, whatever
    leastconn would pick."""
    sidecars, lb_port = fleet
    ws, started = start_session(lb_port)
    session_id = started["session_id"]
    owner = int(session_id.split(".")[0].removeprefix("replica")) - 1
    assert sidecars[owner].sessions() == 1
    while json.loads(ws.recv(timeout=30))["type"] != "chunk":
        pass
    ws.socket.shutdown(socket.SHUT_RDWR)  # dropped: no closing handshake, the session is held
    ws.socket.close()
    others = []
    while sidecars[owner].sessions() < 2 and len(others) < 6:  # fill the owner: its agent weight falls to 1%
        others.append(start_session(lb_port)[0])
    assert sidecars[owner].sessions() == 2
    time.sleep(2 * AGENT_INTER)  # from now on leastconn sends new requests to the other replicas
    for _ in range(3):
        metadata = requests.get(f"http://127.0.0.1:{lb_port}/sessions/{session_id}", timeout=10)
        assert metadata.status_code == 200 and metadata.json()["session_id"] == session_id
    with connect(f"ws://127.0.0.1:{lb_port}/ws/jam?session_id={session_id}", open_timeout=10) as resumed:
        resumed.send(json.dumps({"type": "start", "session_id": session_id}))
        answer = json.loads(resumed.recv(timeout=30))
        assert answer["type"] == "started" and answer["resumed"] is True, answer
        resumed.send(json.dumps({"type": "stop"}))
    recording = requests.get(f"http://127.0.0.1:{lb_port}/sessions/{session_id}/recording", timeout=60)
    assert recording.status_code == 200 and recording.content[:4] == b"RIFF"
    for other in others:
        other.close()


def test_two_predictions_at_once_both_succeed_through_the_balancer(venv_env, demo_dir, tmp_path):
    servers = [CogServer(venv_env, {"JAM_PORT": "0"}, log_path=tmp_path / f"cog{i}.log") for i in range(2)]
    haproxy = None
    try:
        for server in servers:
            server.start()
        haproxy, _, cog_port = start_haproxy(venv_env, [], [servers[0].port, servers[1].port, free_port()],
                                             tmp_path)
        time.sleep(3)

        def predict(seed: int) -> dict:
            return requests.post(f"http://127.0.0.1:{cog_port}/predictions", timeout=300,
                                 json={"input": {"prompt": "two at once", "duration": 2, "seed": seed}}).json()

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(predict, (1, 2)))
        assert [result["status"] for result in results] == ["succeeded", "succeeded"], results
    finally:
        stop_all(haproxy, servers)

