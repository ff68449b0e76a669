"""A checkpoint the step decoder cannot run still serves predictions through audiocraft's own generate, and every
way into a live session says why there is none.

The checkpoint is the demo's, built by audiocraft's own builders with random weights and `layer_scale`, which
audiocraft's LM implements and `engine.lm.supported.check_supported` refuses.
"""

import asyncio
import json
import logging

import pytest
import requests
import torch
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from engine.config import EngineConfig
from engine.core import Engine
from engine.runtime.worker import EngineUnavailable
from engine.work.batch import BatchRequest
from engine.work.session import SessionSettings
from streaming.lyria import protocol as lp
from tests.support.cog_server import CogServer, predict
from tests.support.helpers import data_uri_bytes, decode_wav, free_port
from tests.support.jam_client import START, next_of
from tests.support.servers import start_server
from tests.support.webrtc_client import JamClient

REFUSED = "layer_scale"  # what check_supported names for this checkpoint


@pytest.fixture(scope="module")
def unsupported_dir(tmp_path_factory):
    from weights.demo import build

    return build(tmp_path_factory.mktemp("layer-scale"), n_bands=1, transformer={"layer_scale": 0.1})


@pytest.fixture(scope="module")
def unsupported_engine(unsupported_dir):
    engine = Engine.load(unsupported_dir, device="cpu", config=EngineConfig(max_sessions=1, weight_format="float32"))
    yield engine
    engine.close()


def test_the_engine_loads_says_why_and_predicts_as_audiocraft(unsupported_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="engine.core"):
        engine = Engine.load(unsupported_dir, device="cpu", config=EngineConfig(max_sessions=1))
    try:
        assert f"step decoder does not support: {REFUSED}" in caplog.text
        assert "audiocraft's generate" in caplog.text
        described = engine.describe()
        assert described["streaming"] is False and REFUSED in described["streaming_unavailable"]
        assert engine.rows_in_use == 0
        result = engine.generate(BatchRequest(prompt="piano", duration=1, seed=3, temperature=0.0)).wait()
        assert result.wav.shape == (1, 32000)
        # the very tokens audiocraft's MusicGen.generate gives for these inputs (greedy: no RNG involved)
        musicgen = engine.model.musicgen
        musicgen.set_generation_params(use_sampling=False, duration=1, cfg_coef=3.0)
        musicgen.set_custom_progress_callback(None)
        _, tokens = musicgen.generate(["piano"], return_tokens=True)
        assert torch.equal(result.tokens, tokens[0].cpu())
        with pytest.raises(EngineUnavailable, match=f"cannot stream live sessions: .*{REFUSED}"):
            engine.open_session(SessionSettings(styles=("dub",), weights=(1.0,)), seed=1)
        assert engine.sessions_open == 0 and engine.health().ok
    finally:
        engine.close()


def test_every_protocol_tells_the_client_why_no_session_starts(unsupported_engine, loopback):
    server = start_server(unsupported_engine)
    base = f"http://127.0.0.1:{server.port}"
    try:
        health = requests.get(f"{base}/health", timeout=5).json()
        assert health["status"] == "ready" and health["ok"] is True and health["model"]["streaming"] is False
        assert REFUSED in health["model"]["streaming_unavailable"]

        with connect(f"ws://127.0.0.1:{server.port}/ws/jam") as ws:
            ws.send(json.dumps(START))
            error = next_of(ws, "error")["error"]
            assert "could not start a session" in error and REFUSED in error
            ws.send(json.dumps({"type": "ping"}))  # the socket stays usable
            next_of(ws, "pong")

        with connect(f"ws://127.0.0.1:{server.port}{lp.PATH}") as ws:
            ws.send(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
            ws.recv(timeout=5)
            ws.send(json.dumps({"clientContent": {"weightedPrompts": [{"text": "drone", "weight": 1}]}}))
            ws.send(json.dumps({"playbackControl": "PLAY"}))
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=30)
            assert ws.close_code == 1011 and REFUSED in ws.close_reason

        async def offer() -> dict:
            client = JamClient(base)
            try:
                return await client.offer({"styles": "dub"})
            finally:
                await client.close()

        reply = asyncio.run(offer())
        assert reply["status"] == "failed" and reply["meta"]["error"] == "session_unavailable"
        assert REFUSED in reply["meta"]["detail"]
        assert unsupported_engine.sessions_open == 0
    finally:
        server.stop()


@pytest.mark.slow
def test_cog_serves_predictions_and_its_sidecar_says_why_no_jam(unsupported_dir, venv_env):
    jam_port = free_port()
    cog = CogServer(venv_env, {"COG_WEIGHTS": str(unsupported_dir), "JAM_PORT": str(jam_port),
                               "JAM_HOST": "127.0.0.1"}).start()
    try:
        body = predict(cog, prompt="piano", duration=1, seed=2).json()
        assert body["status"] == "succeeded", body.get("error")
        samples, rate, _ = decode_wav(data_uri_bytes(body["output"])[1])
        assert samples.shape == (rate, 1)
        assert f"step decoder does not support: {REFUSED}" in cog.log_path.read_text()
        with connect(f"ws://127.0.0.1:{jam_port}/ws/jam") as ws:
            ws.send(json.dumps(START))
            assert REFUSED in next_of(ws, "error")["error"]
    finally:
        cog.stop()
