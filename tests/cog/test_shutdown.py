"""A SIGTERM inside Cog drains the jam sidecar first: Cog's server run as deploy/kubernetes.yaml runs it
(`--await-explicit-shutdown true`, the signal sent to the whole process group as tini does with
TINI_KILL_PROCESS_GROUP=1) keeps serving while the worker's jams play on, and shuts down once they ended."""

import json
import os
import signal

import pytest
import requests
from websockets.sync.client import connect

from tests.support.cog_server import CogServer
from tests.support.helpers import free_port, wait_until
from tests.support.jam_client import START, messages_until, next_of

pytestmark = pytest.mark.slow


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_sigterm_drains_the_jams_then_cog_shuts_down(venv_env, demo_dir, tmp_path):
    jam_port = free_port()
    cog = CogServer(venv_env, {"JAM_PORT": str(jam_port), "JAM_HOST": "127.0.0.1", "JAM_DRAIN_SECONDS": "60"},
                    log_path=tmp_path / "cog.log", args=("--await-explicit-shutdown", "true"))
    cog.start()
    sidecar = f"http://127.0.0.1:{jam_port}"
    try:
        with connect(f"ws://127.0.0.1:{jam_port}/ws/jam") as ws:
            ws.send(json.dumps({**START, "params": {**START["params"], "pace": "realtime"}}))
            next_of(ws, "chunk")
            os.killpg(cog.process.pid, signal.SIGTERM)  # parent and worker, as `tini -g` signals them
            draining = messages_until(ws, lambda m: m.get("status") == "draining", timeout=30)[-1]
            assert draining["seconds_left"] == 60
            ready = requests.get(f"{sidecar}/ready", timeout=5).json()
            assert ready["reason"] == "draining: waiting for 1 session", ready
            for _ in range(3):
                next_of(ws, "chunk", timeout=30)  # the jam plays on
            assert requests.get(f"{cog.url}/health-check", timeout=5).json()["status"] == "READY"
            answer = requests.post(f"{cog.url}/predictions", json={"input": {"prompt": "during", "duration": 1}},
                                   timeout=120)
            assert answer.json()["status"] == "succeeded", "Cog serves predictions while the jams drain"
            assert cog.process.poll() is None, "a live jam keeps the container up"
            ws.send(json.dumps({"type": "stop"}))
            next_of(ws, "stopped")
        assert cog.process.wait(timeout=60) == 0, "the drain ended: Cog's server shut down"
        assert wait_until(lambda: not _group_alive(cog.process.pid), 30), "the worker ended with it"
        assert "Shutdown requested via /shutdown endpoint" in (tmp_path / "cog.log").read_text()
    except BaseException:
        print((tmp_path / "cog.log").read_text()[-6000:])
        raise
    finally:
        cog.stop()
        if _group_alive(cog.process.pid):
            os.killpg(cog.process.pid, signal.SIGKILL)
