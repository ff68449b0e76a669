"""Every protocol picks a LoRA adapter served beside the base model (engine.runtime.adapters), each with its real
client against one sidecar: gary4juce's `/api/models` lists them and `model_name` picks one, /ws/jam's
`params.model`, Lyria's `setup.model` (`models/NAME`) through Google's SDK, bar mode by magenta-retry's
`POST /model/select`; an unknown name gets a clear error."""

import asyncio
import json

import numpy as np
import pytest
import torch
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from engine.api import Engine, EngineConfig
from engine.lm.lora import new_adapter, save_adapter
from streaming.lyria import protocol as lp
from tests.support.gary_clients import JuceClient, decode_b64, wav_b64
from tests.support.jam_client import asap_start, decode_chunk, is_status, messages_until, next_of, receive_json
from tests.support.lyria_client import sdk_client
from tests.support.servers import running_server, ws_url
from tests.support.tls import self_signed


@pytest.fixture(scope="module")
def adapter_server(engine, tmp_path_factory):
    """A TLS sidecar (Google's SDK speaks wss only) on an engine of the demo model serving `funk` from its
    adapters folder."""
    folder = tmp_path_factory.mktemp("adapters")
    lm = engine.model.musicgen.lm
    save_adapter(new_adapter(lm, rank=4, alpha=8.0, b_std=0.3, generator=torch.Generator().manual_seed(1)),
                 folder / "funk.safetensors")
    served = Engine(engine.model, EngineConfig(max_sessions=2, adapters_dir=str(folder)))
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    try:
        with running_server(served, ssl_certfile=str(cert), ssl_keyfile=str(key)) as running:
            running.cert = cert
            yield running
    finally:
        served.close()


def _ssl(server):
    import ssl

    return ssl.create_default_context(cafile=str(server.cert))


def test_gary4juce_lists_the_adapters_and_model_name_picks_one(adapter_server, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(adapter_server.cert))  # requests trusts the sidecar's cert
    juce = JuceClient(f"https://127.0.0.1:{adapter_server.port}")
    assert juce.model_paths() == ["demo", "funk"]
    rate = 32000
    clip = (0.3 * np.sin(2 * np.pi * 220 * np.arange(4 * rate) / rate)).astype(np.float32)
    outputs = {}
    for model in ("demo", "funk"):
        answer = juce.process_audio(wav_b64(clip, rate), model, prompt_duration=2, seed=3)
        assert answer["success"], answer
        outputs[model] = decode_b64(juce.poll_until_done(answer["session_id"])[0])[0]
    assert outputs["demo"].shape == outputs["funk"].shape
    assert not np.array_equal(outputs["demo"], outputs["funk"])  # the adapter reached the prediction
    answer = juce.process_audio(wav_b64(clip, rate), "nope", prompt_duration=2)
    assert not answer["success"]
    assert "model_name 'nope' is not served here" in answer["error"] and "adapters funk" in answer["error"]


def test_ws_jam_params_model_picks_an_adapter(adapter_server):
    url = ws_url(adapter_server).replace("ws://", "wss://")
    audio = {}
    for model in (None, "funk"):
        with connect(url, ssl=_ssl(adapter_server)) as ws:
            start = asap_start("jazz")
            start["params"].update(seed=4, model=model)
            ws.send(json.dumps(start))
            assert receive_json(ws)["type"] == "started"
            audio[model] = decode_chunk(next_of(ws, "chunk"))[0]
            ws.send(json.dumps({"type": "update", "model": "base" if model else "funk"}))
            refused = messages_until(ws, is_status("refused"))[-1]  # the session plays on
            assert "model can only be set when the session starts" in refused["error"]
    assert not (audio[None] == audio["funk"]).all()
    with connect(url, ssl=_ssl(adapter_server)) as ws:
        start = asap_start("jazz")
        start["params"]["model"] = "nope"
        ws.send(json.dumps(start))
        error = next_of(ws, "error")
        assert "model 'nope' is not served here" in error["error"] and "served: base, funk" in error["error"]


def test_lyria_setup_model_picks_an_adapter_through_googles_sdk(adapter_server, monkeypatch):
    from google.genai import types

    client = sdk_client(adapter_server, monkeypatch, "any-key")

    async def first_chunk(model: str) -> bytes:
        async with client.aio.live.music.connect(model=model) as session:
            await session.set_weighted_prompts(prompts=[types.WeightedPrompt(text="minimal techno", weight=1.0)])
            await session.set_music_generation_config(config=types.LiveMusicGenerationConfig(seed=7))
            await session.play()
            async for message in session.receive():
                if message.server_content and message.server_content.audio_chunks:
                    return message.server_content.audio_chunks[0].data
        raise AssertionError("no audio")

    base = asyncio.run(asyncio.wait_for(first_chunk("models/lyria-realtime-exp"), 120))
    funk = asyncio.run(asyncio.wait_for(first_chunk("models/funk"), 120))
    assert len(base) == len(funk) and base != funk
    with connect(f"wss://127.0.0.1:{adapter_server.port}{lp.PATH}", ssl=_ssl(adapter_server)) as ws:
        ws.send(json.dumps({"setup": {"model": "models/nope"}}))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert "'models/nope' is not served here" in ws.close_reason


def _bar_chunk(server, seed: int) -> str:
    """The first chunk of a bar-mode session (the seed's /ws/jam `mode: "bar"`) at `seed`, as base64 WAV."""
    import base64
    import io

    import soundfile as sf

    rate = 44100
    t = np.arange(2 * rate) / rate
    tone = 0.3 * np.sin(2 * np.pi * 110 * t)
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([tone, tone], axis=1), rate, subtype="PCM_16", format="WAV")
    start = {"type": "start", "mode": "bar", "binary_audio": False,
             "loop_audio_b64": base64.b64encode(buffer.getvalue()).decode(),
             "params": {"bpm": 120, "beats_per_bar": 4, "bars_per_chunk": 1, "target_sr": 48000, "seed": seed}}
    with connect(ws_url(server).replace("ws://", "wss://"), ssl=_ssl(server), max_size=None) as ws:
        ws.send(json.dumps(start))
        assert receive_json(ws)["type"] == "started"
        return next_of(ws, "chunk")["audio_base64"]


def test_bar_mode_plays_the_adapter_magenta_retrys_model_select_chose(adapter_server, monkeypatch):
    import requests

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(adapter_server.cert))
    url = f"https://127.0.0.1:{adapter_server.port}/model/"
    base_chunk = _bar_chunk(adapter_server, seed=9)
    dry = requests.post(url + "select", json={"repo_id": "funk", "dry_run": True}, timeout=10).json()
    assert dry["ok"] and requests.get(url + "config", timeout=10).json()["repo"] == "demo"  # a dry run changes nothing
    chosen = requests.post(url + "select", json={"repo_id": "owner/funk", "step": "latest"}, timeout=10).json()
    assert chosen["ok"] and chosen["repo"] == "funk"
    assert requests.get(url + "config", timeout=10).json()["repo"] == "funk"
    try:
        funk_chunk = _bar_chunk(adapter_server, seed=9)
    finally:
        back = requests.post(url + "select", json={"step": "none"}, timeout=10).json()
    assert back["ok"] and back["repo"] == "demo"
    assert funk_chunk != base_chunk
    assert _bar_chunk(adapter_server, seed=9) == base_chunk  # the base again, at the same seed
    refused = requests.post(url + "select", json={"repo_id": "nope"}, timeout=10).json()
    assert not refused["ok"] and "its adapters funk" in refused["error"]
