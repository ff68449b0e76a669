"""Replicas behind Debian's HAProxy with the project's own deploy/haproxy.cfg: bursts of new jams, as fast as a
client sends them, land by free slots (never on a full replica while another has room, also when a replica's slots
are taken by sessions no connection shows); a full fleet answers with the protocol's own error; a drained replica
gets no new session, exits when its jams end, and takes sessions again once restarted at the same address; a killed
one gets none; and predictions queue for a free replica instead of meeting Cog's 409."""

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
import yaml
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
        self.env, self.log_path, self.index = env, log_dir / f"sidecar{index}.log", index
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "streaming.app.server"], cwd=ROOT, stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
            env=dict(self.env, JAM_HOST="127.0.0.1", JAM_PORT=str(self.port), JAM_AGENT_PORT=str(self.agent_port),
                     JAM_MAX_SESSIONS="2", JAM_REPLICA_ID=f"replica{self.index + 1}"))

    def restart(self) -> None:
        """A new process at the same address (a rolling update's replacement), once the old one has exited."""
        assert self.process.poll() is not None
        self.process = self._spawn()
        assert wait_until(lambda: _healthy(self.url("/health")), 120), "the restarted sidecar did not start"

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


def start_session(lb_port: int, query: str = ""):
    # the sessions play unread for seconds: an unbounded queue keeps the client reading, so its close completes
    ws = connect(f"ws://127.0.0.1:{lb_port}/ws/jam{query}", open_timeout=10, max_queue=None)
    ws.send(json.dumps(START))
    return ws, json.loads(ws.recv(timeout=60))


def burst(lb_port: int, count: int) -> tuple[list, list[str]]:
    """`count` starts one after another as fast as a client sends them: the sockets and what each start got."""
    sockets, answers = [], []
    for _ in range(count):
        ws, first = start_session(lb_port)
        sockets.append(ws)
        answers.append(first["type"] if first["type"] == "started" else first["error"])
    return sockets, answers


def close_all(sockets: list) -> None:
    for ws in sockets:
        ws.close()


def drop(ws) -> None:
    """The network goes: no closing handshake, so the replica holds the session for a resume, no connection
    carrying it."""
    ws.socket.shutdown(socket.SHUT_RDWR)
    ws.socket.close()


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


def test_bursts_land_by_free_slots_and_avoid_full_drained_and_dead_replicas(fleet):
    sidecars, lb_port = fleet

    def counts() -> list[int]:
        return [sidecar.sessions() if sidecar.process.poll() is None else None for sidecar in sidecars]

    def settle(expected: list) -> None:
        assert wait_until(lambda: counts() == expected, 10), counts()
        time.sleep(2 * AGENT_INTER)  # the agents report the new state

    # Six starts as fast as a client sends them, after a start or two that the agents have reported already (the
    # pattern that met a full replica: its peers' weights fresh, its own stale): two per replica, every time.
    for reported_first in (0, 1, 2):
        sockets = []
        for _ in range(reported_first):
            sockets += burst(lb_port, 1)[0]
            time.sleep(1.5 * AGENT_INTER)
        more, answers = burst(lb_port, 6 - reported_first)
        sockets += more
        assert answers == ["started"] * len(answers) and counts() == [2, 2, 2], (reported_first, answers, counts())
        seventh, answer = start_session(lb_port)
        assert answer == {"type": "error", "error": "concurrency_limit_reached", "limit": 2}, "the protocol's refusal"
        seventh.close()
        close_all(sockets)
        settle([0, 0, 0])

    with ThreadPoolExecutor(6) as pool:  # six clients at the same moment
        started = list(pool.map(lambda _: start_session(lb_port), range(6)))
    assert [first["type"] for _, first in started] == ["started"] * 6 and counts() == [2, 2, 2], counts()
    close_all([ws for ws, _ in started])
    settle([0, 0, 0])

    # A replica whose slots are taken by sessions no connection carries (held for a resume here; WebRTC peers and
    # HTTP bar sessions alike): HAProxy sees no connection there, yet no start goes to it.
    held = []
    for _ in range(2):
        ws, first = start_session(sidecars[0].port)  # straight to the replica, not through the balancer
        held.append(first["session_id"])
        drop(ws)
    settle([2, 0, 0])
    sockets, answers = burst(lb_port, 4)
    assert answers == ["started"] * 4 and counts() == [2, 2, 2], (answers, counts())
    extra, answer = start_session(lb_port)
    assert answer["error"] == "concurrency_limit_reached"
    extra.close()
    for session_id in held:  # resumed and stopped: their slots come back
        with connect(f"ws://127.0.0.1:{sidecars[0].port}/ws/jam?session_id={session_id}") as resumed:
            resumed.send(json.dumps({"type": "start", "session_id": session_id}))
            assert json.loads(resumed.recv(timeout=30))["resumed"] is True
            resumed.send(json.dumps({"type": "stop"}))
    close_all(sockets)
    settle([0, 0, 0])

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
    kept.close()
    assert sidecars[drained].process.wait(timeout=20) == 0, "the drained replica exits when its last jam ends"

    sidecars[drained].restart()  # its replacement at the same address takes new sessions again
    time.sleep(3 * AGENT_INTER)
    replacement = [start_session(lb_port) for _ in range(2)]
    assert all(first["type"] == "started" for _, first in replacement), replacement
    assert counts()[drained] == 2, counts()
    close_all([ws for ws, _ in landed + replacement])


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


def replica_prediction_env() -> dict:
    """The prediction slots each replica runs with, as deploy/kubernetes.yaml sets them."""
    deployment = next(yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()))
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return {item["name"]: item["value"] for item in env
            if item["name"] in ("COG_MAX_CONCURRENCY", "MUSICGEN_MAX_PREDICTIONS")}


def test_predictions_queue_for_a_free_replica_and_never_meet_cogs_409(venv_env, demo_dir, tmp_path):
    """Twelve predictions at once on two replicas: HAProxy (maxconn 1) sends each replica the next one the moment
    the previous response is through, before Cog 0.23.1 has its slot back (that comes with the worker's Idle
    message, a moment later): with the replicas' spare Cog slot (COG_MAX_CONCURRENCY = maxconn + 1) none meets a
    409."""
    slots = replica_prediction_env()
    assert slots == {"COG_MAX_CONCURRENCY": "2", "MUSICGEN_MAX_PREDICTIONS": "1"}, slots
    servers = [CogServer(venv_env, {"JAM_PORT": "0", **slots}, log_path=tmp_path / f"cog{i}.log") for i in range(2)]
    haproxy = None
    try:
        for server in servers:
            server.start()
        haproxy, _, cog_port = start_haproxy(venv_env, [], [servers[0].port, servers[1].port, free_port()],
                                             tmp_path)
        time.sleep(3)

        def predict(seed: int) -> tuple[int, str]:
            answer = requests.post(f"http://127.0.0.1:{cog_port}/predictions", timeout=300,
                                   json={"input": {"prompt": "queued", "duration": 1, "seed": seed}})
            try:
                return answer.status_code, answer.json().get("status")
            except ValueError:
                return answer.status_code, answer.text[:200]

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(predict, range(12)))
        assert results == [(200, "succeeded")] * 12, results
    finally:
        stop_all(haproxy, servers)
