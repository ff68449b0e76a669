"""The real google-genai SDK (client.aio.live.music), Google's reference example as written, and raw WebSocket
clients against our sidecar on 127.0.0.1 (TLS for the SDK)."""

import asyncio
import base64
import json

import numpy as np
import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from streaming.lyria import protocol as lp
from tests.support.helpers import wait_until
from tests.support.lyria_client import record_parsed, reference_receiver, run_reference, sdk_client, until_read
from tests.support.servers import running_server, sessions
from tests.support.tls import self_signed

TOKEN = "test-api-key"


@pytest.fixture(scope="module")
def tls_server(engine, tmp_path_factory):
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    with running_server(engine, token=TOKEN, ssl_certfile=str(cert), ssl_keyfile=str(key)) as running:
        running.cert = cert
        yield running


def tls_sessions(server) -> int:
    """The sessions the TLS server's /health counts."""
    return requests.get(f"https://127.0.0.1:{server.port}/health", verify=str(server.cert), timeout=5).json()[
        "sessions"]


def pcm(chunk) -> np.ndarray:
    return np.frombuffer(chunk.data, dtype="<i2").reshape(-1, 2)


def test_google_genai_sdk_session(tls_server, monkeypatch):
    from google.genai import types

    client = sdk_client(tls_server, monkeypatch, TOKEN)

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


def test_googles_reference_example_runs_as_written(tls_server, monkeypatch):
    """Lyria's reference example (tests/data, verbatim) reads `message.server_content.audio_chunks[0].data` from
    every message: with its bpm, which MusicGen approximates and says so, it plays on, chunk after chunk."""
    parsed = record_parsed(monkeypatch)
    client = sdk_client(tls_server, monkeypatch, TOKEN)

    async def scenario():
        await until_read(asyncio.ensure_future(run_reference(client)), parsed, 5)

    asyncio.run(scenario())
    assert all(message.server_content.audio_chunks[0].data for message in parsed)
    assert wait_until(lambda: tls_sessions(tls_server) == 0, 10)  # cancelled, the example closed its session


@pytest.mark.slow
@pytest.mark.parametrize("config", ["bpm=120", "scale=types.Scale.D_MAJOR_B_MINOR", "density=0.2",
                                    "brightness=0.9", "mute_drums=True", "only_bass_and_drums=True",
                                    "music_generation_mode=types.MusicGenerationMode.VOCALIZATION",
                                    "seed=-2147483648, temperature=0.0", "top_k=1000, guidance=6.0"])
def test_googles_reference_example_runs_with_any_config(tls_server, monkeypatch, config):
    """The example with only its LiveMusicGenerationConfig arguments replaced."""
    parsed = record_parsed(monkeypatch)
    client = sdk_client(tls_server, monkeypatch, TOKEN)

    async def scenario():
        await until_read(asyncio.ensure_future(run_reference(client, config)), parsed, 3)

    asyncio.run(scenario())
    assert wait_until(lambda: tls_sessions(tls_server) == 0, 10)


def test_the_reference_receiver_survives_filtered_prompts_and_play_before_prompts(tls_server, monkeypatch):
    """The example's `receive_audio` as written, on a session that sends PLAY first and empty prompts: what the
    server tells comes with audio, and the SDK hands the filteredPrompt to its user beside it."""
    from google.genai import types

    parsed = record_parsed(monkeypatch)
    client = sdk_client(tls_server, monkeypatch, TOKEN)
    receive_audio = reference_receiver(client)

    async def scenario():
        async with client.aio.live.music.connect(model="models/lyria-realtime-exp") as session:
            receiving = asyncio.ensure_future(receive_audio(session))
            await session.play()
            await session.set_weighted_prompts(prompts=[types.WeightedPrompt(text="", weight=1.0)])
            await session.set_weighted_prompts(prompts=[types.WeightedPrompt(text="minimal techno", weight=1.0),
                                                        types.WeightedPrompt(text=" ", weight=1.0)])
            await until_read(receiving, parsed, 4)

    asyncio.run(scenario())
    assert [m.filtered_prompt.text for m in parsed if m.filtered_prompt] == ["", " "]


def test_notices_reach_raw_clients_beside_the_audio(server):
    """A raw client reads `warning` and `filteredPrompt` in the audio messages; no message comes without audio."""
    with connect(f"ws://127.0.0.1:{server.port}{lp.PATH}", max_size=None) as ws:
        ws.send(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
        ws.recv(timeout=5)
        ws.send(json.dumps({"playbackControl": "PLAY"}))
        ws.send(json.dumps({"clientContent": {"weightedPrompts": [{"text": "drone", "weight": 1},
                                                                  {"text": "", "weight": 1}]}}))
        ws.send(json.dumps({"musicGenerationConfig": {"bpm": 90, "muteDrums": True}}))
        messages = [json.loads(ws.recv(timeout=60)) for _ in range(3)]
    assert all(m["serverContent"]["audioChunks"][0]["data"] for m in messages)
    told = "\n".join(m.get("warning", "") for m in messages)
    assert "PLAY came before weightedPrompts" in told and "bpm, muteDrums: MusicGen cannot follow" in told
    assert [m["filteredPrompt"] for m in messages if "filteredPrompt" in m] == \
        [{"text": "", "filteredReason": "empty prompt: it was removed"}]


def audio_messages(ws):
    """The server's audio messages, as they come."""
    while True:
        yield json.loads(ws.recv(timeout=60))


def chunk_pcm(message: dict) -> np.ndarray:
    data = base64.b64decode(message["serverContent"]["audioChunks"][0]["data"])
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767


def reported_seed(message: dict):
    return message["serverContent"]["audioChunks"][0]["sourceMetadata"]["musicGenerationConfig"].get("seed")


def first_chunk(server, seed: int) -> np.ndarray:
    """The first second of a fresh session on `seed`."""
    with connect(f"ws://127.0.0.1:{server.port}{lp.PATH}", max_size=None) as ws:
        ws.send(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
        ws.recv(timeout=5)
        ws.send(json.dumps({"clientContent": {"weightedPrompts": [{"text": "drone", "weight": 1}]}}))
        ws.send(json.dumps({"musicGenerationConfig": {"seed": seed}}))
        ws.send(json.dumps({"playbackControl": "PLAY"}))
        message = next(audio_messages(ws))
    assert reported_seed(message) == seed
    return chunk_pcm(message)


def test_a_seed_sent_mid_session_applies_at_reset_context(server):
    """A new seed waits for a fresh context (Lyria's rule for bpm and scale) and says so; meanwhile chunks report
    the seed that made them; after RESET_CONTEXT the stream is the one a session on that seed plays. A negative
    int32 seed is a seed like any other."""
    with connect(f"ws://127.0.0.1:{server.port}{lp.PATH}", max_size=None) as ws:
        ws.send(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
        ws.recv(timeout=5)
        ws.send(json.dumps({"clientContent": {"weightedPrompts": [{"text": "drone", "weight": 1}]}}))
        ws.send(json.dumps({"musicGenerationConfig": {"seed": 3}}))
        ws.send(json.dumps({"playbackControl": "PLAY"}))
        received = audio_messages(ws)
        assert reported_seed(next(received)) == 3
        ws.send(json.dumps({"musicGenerationConfig": {"seed": -4}}))
        told = next(received)
        assert "seed -4 applies to a fresh context: send RESET_CONTEXT" in told["warning"]
        assert reported_seed(told) == 3
        ws.send(json.dumps({"playbackControl": "RESET_CONTEXT"}))
        message = next(received)
        while reported_seed(message) == 3:  # the chunk already on its way when RESET_CONTEXT came
            message = next(received)
        assert reported_seed(message) == -4
        reset = chunk_pcm(message)
    assert wait_until(lambda: sessions(server) == 0, 10)
    fresh, other = first_chunk(server, -4), first_chunk(server, -3)
    assert np.abs(reset - fresh).max() <= 2 / 32767, "RESET_CONTEXT did not apply the seed sent"
    assert np.abs(reset - other).max() > 0.005  # another seed makes other audio


def test_a_session_that_keeps_failing_closes_with_1011_and_the_reason(server, word, monkeypatch):
    """Failures in a row without a chunk: the session ends, its slot is freed, and the socket closes saying why
    (the SDK raises it as an APIError; a message without audio would break its readers)."""
    from engine.runtime.streams import Stream

    real = Stream.accept_tokens

    def accept(self, tokens):
        if any(word in text for text in self.conditioning.texts):
            raise RuntimeError("injected lasting failure")
        return real(self, tokens)

    monkeypatch.setattr(Stream, "accept_tokens", accept)
    with connect(f"ws://127.0.0.1:{server.port}{lp.PATH}") as ws:
        ws.send(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
        ws.recv(timeout=5)
        ws.send(json.dumps({"clientContent": {"weightedPrompts": [{"text": f"{word} drone", "weight": 1}]}}))
        ws.send(json.dumps({"playbackControl": "PLAY"}))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=60)
    assert ws.close_code == 1011 and ws.close_reason.startswith("generation failed: ")
    assert "injected lasting failure" in ws.close_reason
    assert wait_until(lambda: sessions(server) == 0, 5)


def test_wrong_api_key_is_refused_with_1008(tls_server, monkeypatch):
    import ssl

    context = ssl.create_default_context(cafile=str(tls_server.cert))
    with connect(f"wss://127.0.0.1:{tls_server.port}{lp.PATH}", ssl=context,
                 additional_headers={"x-goog-api-key": "wrong"}) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 1008
    with connect(f"wss://127.0.0.1:{tls_server.port}{lp.PATH}?key={TOKEN}", ssl=context) as ws:
        ws.send(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
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
        ws.send(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
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

        ws.send(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
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
