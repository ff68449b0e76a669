"""The real google-genai SDK (client.aio.live.music) against our TLS sidecar on 127.0.0.1."""

import asyncio
import json

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from streaming.lyria import protocol as lp
from tests.support.servers import running_server
from tests.support.tls import self_signed

TOKEN = "test-api-key"


@pytest.fixture(scope="module")
def tls_server(engine, tmp_path_factory):
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    with running_server(engine, token=TOKEN, ssl_certfile=str(cert), ssl_keyfile=str(key)) as running:
        running.cert = cert
        yield running


def pcm(chunk) -> np.ndarray:
    return np.frombuffer(chunk.data, dtype="<i2").reshape(-1, 2)


def test_google_genai_sdk_session(tls_server, monkeypatch):
    from google import genai
    from google.genai import types

    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.cert))
    client = genai.Client(api_key=TOKEN, http_options={"base_url": f"https://127.0.0.1:{tls_server.port}",
                                                       "api_version": "v1alpha"})

    async def jam() -> dict:
        seen: dict = {"chunks": [], "prompts": []}
        async with client.aio.live.music.connect(model="models/lyria-realtime-exp") as session:
            await session.set_weighted_prompts(prompts=[types.WeightedPrompt(text="minimal techno", weight=1.0)])
            await session.set_music_generation_config(
                config=types.LiveMusicGenerationConfig(bpm=90, temperature=1.0, top_k=30, seed=7))
            await session.play()
            messages = session.receive()

            async def next_chunk():
                async for message in messages:
                    if message.server_content and message.server_content.audio_chunks:
                        return message.server_content.audio_chunks[0]

            for _ in range(2):
                seen["chunks"].append(await asyncio.wait_for(next_chunk(), 60))
            await session.set_weighted_prompts(prompts=[types.WeightedPrompt(text="piano", weight=2.0),
                                                        types.WeightedPrompt(text="strings", weight=2.0)])
            for _ in range(3):
                chunk = await asyncio.wait_for(next_chunk(), 60)
                seen["prompts"].append([p.text for p in chunk.source_metadata.client_content.weighted_prompts])
                seen["chunks"].append(chunk)
            await session.pause()
            await session.reset_context()
            await session.play()
            seen["chunks"].append(await asyncio.wait_for(next_chunk(), 60))
            await session.stop()
        return seen

    seen = asyncio.run(jam())
    for chunk in seen["chunks"]:
        assert chunk.mime_type == "audio/l16;rate=48000;channels=2"
        assert pcm(chunk).shape == (48000, 2)  # 1 s at 48 kHz, stereo
    assert seen["chunks"][0].source_metadata.music_generation_config.seed == 7
    assert seen["prompts"][-1] == ["piano", "strings"]


def test_wrong_api_key_is_refused_with_1008(tls_server, monkeypatch):
    import ssl

    context = ssl.create_default_context(cafile=str(tls_server.cert))
    with connect(f"wss://127.0.0.1:{tls_server.port}{lp.PATH}", ssl=context,
                 additional_headers={"x-goog-api-key": "wrong"}) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 1008
    with connect(f"wss://127.0.0.1:{tls_server.port}{lp.PATH}?key={TOKEN}", ssl=context) as ws:
        ws.send(json.dumps({"setup": {"model": "models/x"}}))
        assert set(json.loads(ws.recv(timeout=5))["setupComplete"]) == {"sessionId"}


def test_out_of_order_message_closes_with_a_reason(server):
    with connect(f"ws://127.0.0.1:{server.port}{lp.PATH}") as ws:
        ws.send(json.dumps({"playbackControl": "PLAY"}))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 1007 and "before setup" in ws.close_reason


def test_stream_is_continuous_at_48k_and_pause_keeps_position(server):
    """Chunks join without seams after resampling; a pause does not skip audio."""
    with connect(f"ws://127.0.0.1:{server.port}{lp.PATH}") as ws:
        ws.send(json.dumps({"setup": {"model": "models/x"}}))
        ws.recv(timeout=5)
        ws.send(json.dumps({"clientContent": {"weightedPrompts": [{"text": "drone", "weight": 1}]}}))
        ws.send(json.dumps({"musicGenerationConfig": {"seed": 3}}))
        ws.send(json.dumps({"playbackControl": "PLAY"}))

        def chunk():
            while True:
                message = json.loads(ws.recv(timeout=60))
                if "serverContent" in message:
                    import base64

                    data = base64.b64decode(message["serverContent"]["audioChunks"][0]["data"])
                    return np.frombuffer(data, dtype="<i2").reshape(-1, 2).astype(np.float32) / 32767

        first = chunk()
        ws.send(json.dumps({"playbackControl": "PAUSE"}))
        ws.send(json.dumps({"playbackControl": "PLAY"}))
        second = chunk()
    joined = np.concatenate([first, second])[:, 0]
    jumps = np.abs(np.diff(joined))
    boundary = len(first) - 1
    assert jumps[boundary] <= 4 * np.percentile(jumps, 99.9) + 1e-3


def test_each_chunk_carries_the_prompts_it_was_generated_with(server):
    """The chunk in the making when new prompts arrive was generated with the old ones, and says so."""
    def prompts(message) -> list[str]:
        metadata = message["serverContent"]["audioChunks"][0]["sourceMetadata"]
        return [p["text"] for p in metadata["clientContent"]["weightedPrompts"]]

    with connect(f"ws://127.0.0.1:{server.port}{lp.PATH}", max_size=None) as ws:
        def audio() -> dict:
            while True:
                message = json.loads(ws.recv(timeout=60))
                if "serverContent" in message:
                    return message

        ws.send(json.dumps({"setup": {"model": "models/x"}}))
        ws.recv(timeout=5)
        ws.send(json.dumps({"clientContent": {"weightedPrompts": [{"text": "drone", "weight": 1}]}}))
        ws.send(json.dumps({"musicGenerationConfig": {"seed": 3, "temperature": 0.9}}))
        ws.send(json.dumps({"playbackControl": "PLAY"}))
        first = audio()  # the next chunk was asked for before this one was sent: it is in the making now
        ws.send(json.dumps({"clientContent": {"weightedPrompts": [{"text": "piano", "weight": 1}]}}))
        ws.send(json.dumps({"musicGenerationConfig": {"seed": 3, "temperature": 0.5}}))
        in_the_making, after = audio(), audio()
    assert prompts(first) == prompts(in_the_making) == ["drone"]
    assert prompts(after) == ["piano"]
    config = [m["serverContent"]["audioChunks"][0]["sourceMetadata"]["musicGenerationConfig"]["temperature"]
              for m in (first, in_the_making, after)]
    assert config == [0.9, 0.9, 0.5]
