"""The jam sidecar inside Cog's worker: same process and engine as predictions, both at once."""

import json
import threading

import requests
from websockets.sync.client import connect

from tests.support.cog_server import predict as predict_http
from tests.support.helpers import data_uri_bytes, decode_wav
from tests.support.jam_client import START, next_of, run_seed_client


def test_jam_inside_cog_while_a_prediction_runs(cog):
    prediction = {}

    def predict():
        prediction["body"] = predict_http(cog, prompt="long", duration=20, seed=4).json()

    with connect(cog.jam_url) as ws:
        ws.send(json.dumps(START))
        next_of(ws, "chunk")
        thread = threading.Thread(target=predict)
        thread.start()
        chunks_during = 0
        while thread.is_alive() and chunks_during < 100:
            next_of(ws, "chunk", timeout=30)
            chunks_during += 1
        thread.join(300)
        ws.send(json.dumps({"type": "stop"}))
        next_of(ws, "stopped")
    assert chunks_during >= 3, "jam chunks stalled while the prediction ran"
    body = prediction["body"]
    assert body["status"] == "succeeded", body.get("error")
    samples, rate, _ = decode_wav(data_uri_bytes(body["output"])[1])
    assert samples.shape[0] == 20 * rate


def test_sidecar_health_reports_the_shared_model(cog):
    health = requests.get(cog.jam_url.replace("ws://", "http://").replace("/ws/jam", "/health"), timeout=5).json()
    assert health["status"] == "ready" and health["ok"] is True and health["max_sessions"] == 2
    assert health["model"]["demo_noise"] is True


def test_the_seed_python_client_jams_with_the_cog_container(cog, tmp_path):
    lines = run_seed_client(cog.jam_url, tmp_path)
    assert len(lines) == 2 and all(line.endswith(" 32000") for line in lines)
