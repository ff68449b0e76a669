"""Cog's real server (coglet) with COG_MAX_CONCURRENCY > 1: predictions run at once on the async `run`, each
prediction's logs stay its own, and a seed gives the same bytes alone or beside others."""

import threading
import time

import pytest
import requests

from tests.support.cog_server import CogServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def concurrent_cog(venv_env, demo_dir):
    server = CogServer(venv_env, {"COG_MAX_CONCURRENCY": "3", "JAM_PORT": "0"}).start()
    yield server
    server.stop()


def _predict(cog, **inputs) -> dict:
    started = time.monotonic()
    response = requests.post(f"{cog.url}/predictions", json={"input": inputs}, timeout=300)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded", body.get("error")
    return dict(body, wall=(started, time.monotonic()))


def test_three_predictions_run_at_once_and_a_seed_keeps_its_bytes(concurrent_cog):
    alone = _predict(concurrent_cog, prompt="techno", duration=3, seed=7)
    results: dict[int, dict] = {}
    requests_ = [(0, "techno", 3, 7), (1, "harp", 4, 8), (2, "techno", 3, 7)]
    threads = [threading.Thread(target=lambda i=i, p=p, d=d, s=s: results.__setitem__(
        i, _predict(concurrent_cog, prompt=p, duration=d, seed=s))) for i, p, d, s in requests_]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(results) == [0, 1, 2]
    assert results[0]["output"] == results[2]["output"] == alone["output"]
    assert results[1]["output"] != alone["output"]
    # each prediction's own logs, not its neighbours'
    assert "Using seed 8" in results[1]["logs"] and "Using seed 7" not in results[1]["logs"]
    # they overlapped: every one started before any finished
    assert max(r["wall"][0] for r in results.values()) < min(r["wall"][1] for r in results.values())
    # the engine took all three at once (COG_MAX_CONCURRENCY sized its prediction slots): none waited for a slot
    assert not any("waits for a slot" in r["logs"] for r in results.values())
