"""/ws/jam's `input` message: the player's audio into a live session, with a real WebSocket client and server."""

import base64
import json
import math

import numpy as np
import pytest
from websockets.sync.client import connect

from streaming.jam import protocol as jp
from tests.support.jam_client import START, decode_chunk, messages_until, next_of
from tests.support.servers import sessions, ws_url

CHUNK_FRAMES = 12  # 0.48 s chunks


def start(seed: int, **params) -> str:
    return json.dumps({**START, "params": {**START["params"], "seed": seed, "max_decode_frames": CHUNK_FRAMES,
                                           "pace": "asap", **params}})


def pcm(seconds: float, rate: int = 48000, channels: int = 1, freq: float = 330.0) -> str:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * math.pi * freq * t) * 32767).astype("<i2")
    return base64.b64encode(np.repeat(wave[:, None], channels, axis=1).tobytes()).decode()


def input_message(seconds: float = 0.48, rate: int = 48000, channels: int = 1, **fields) -> str:
    return json.dumps({"type": "input", "sample_rate": rate, "channels": channels,
                       "audio": pcm(seconds, rate, channels), **fields})


def play(server, seed: int, chunks: int, send=None) -> tuple[np.ndarray, list[dict]]:
    """`chunks` chunks of a session; after chunk 1 arrives, `send(ws, chunk)` plays along. The audio heard (each
    chunk without its crossfade tail) and the metadata."""
    audio, metas = [], []
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(start(seed))
        for index in range(chunks):
            chunk = next_of(ws, "chunk")
            samples, rate = decode_chunk(chunk)
            meta = chunk["metadata"]
            audio.append(samples[: int(round(meta["chunk_seconds"] * rate))])
            metas.append(meta)
            if index == 1 and send is not None:
                send(ws, meta)
        ws.send(json.dumps({"type": "stop"}))
        next_of(ws, "stopped")
    return np.concatenate(audio), metas


def test_input_is_heard_in_the_chunks_after_it_and_nothing_before(server):
    """A/B on one seed: the session that heard the player continues from what was played; the audio it had made
    before stays the same to the sample."""
    def player(ws, meta):
        ws.send(input_message(0.48, time=meta["start_seconds"]))

    plain, _ = play(server, seed=21, chunks=8)
    played, metas = play(server, seed=21, chunks=8, send=player)
    assert metas[1]["start_seconds"] == pytest.approx(0.48)
    differs = np.nonzero(plain != played)[0]
    assert len(differs), "the input was not heard"
    assert differs[0] / 32000 >= 0.96, "input changed audio made before it"


def test_a_session_without_input_plays_the_same_bytes(server):
    a, _ = play(server, seed=22, chunks=4)
    b, _ = play(server, seed=22, chunks=4)
    assert np.array_equal(a, b)


@pytest.mark.parametrize(("message", "error"), [
    (json.dumps({"type": "input", "sample_rate": 48000, "audio": "not base64!"}), "audio is not valid base64"),
    (json.dumps({"type": "input", "sample_rate": 48000, "audio": ""}), "audio is empty"),
    (json.dumps({"type": "input", "sample_rate": 48000, "channels": 2, "audio": pcm(0.1)[:-4] + "AAA="}),
     "not whole 16-bit frames of 2 channel"),
    (json.dumps({"type": "input", "sample_rate": 48000, "channels": 3, "audio": pcm(0.1)}), "channels"),
    (json.dumps({"type": "input", "sample_rate": 100, "audio": pcm(0.1)}), "sample_rate"),
    (json.dumps({"type": "input", "audio": pcm(0.1)}), "sample_rate"),
    (input_message(0.1, time=-1), "time"),
    (input_message(5.0, rate=8000), "at most 4 s"),
    (input_message(4.0, rate=96000, channels=2), "message too large"),
    (json.dumps({"type": "update", "input_gain": 3}), "input_gain must be within [0, 2]"),
    (json.dumps({"type": "update", "input_mode": "duck"}), "input_mode"),
])
def test_bad_input_is_refused_naming_the_field_and_the_session_plays_on(server, message, error):
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(start(23))
        next_of(ws, "chunk")
        ws.send(message)
        seen = messages_until(ws, lambda m: m["type"] in ("status", "error") and m.get("status") != "playing")
        assert seen[-1]["type"] == "status" and seen[-1]["status"] == "refused", seen[-1]
        assert error in seen[-1]["error"]
        next_of(ws, "chunk")
        next_of(ws, "chunk")


def test_input_and_its_settings_while_playing(server):
    """An update sets the gain and mode (acknowledged with the values in force); input far ahead of the session is
    dropped with a status naming why; good input is taken silently."""
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(start(24))
        next_of(ws, "chunk")
        ws.send(json.dumps({"type": "update", "input_gain": 0.5, "input_mode": "replace"}))
        updated = next_of(ws, "status")
        assert updated["params"]["input_gain"] == 0.5 and updated["params"]["input_mode"] == "replace"
        ws.send(input_message(0.2, time=3600.0))
        dropped = messages_until(ws, lambda m: m.get("status") == "input_dropped")[-1]
        assert "ahead of the session's audio" in dropped["error"] and dropped["time"] == 3600.0
        ws.send(input_message(0.2, rate=16000, channels=2))
        ws.send(json.dumps({"type": "ping"}))
        seen = messages_until(ws, lambda m: m["type"] == "pong")
        assert not [m for m in seen if m["type"] == "status"]


def test_input_without_a_session_gets_an_error(server):
    with connect(ws_url(server)) as ws:
        ws.send(input_message(0.1))
        assert "input before start" in next_of(ws, "error")["error"]
    assert sessions(server) == 0


def test_input_after_stop_is_an_error():
    protocol = jp.JamProtocol()
    protocol.receive_text(json.dumps({"type": "start"}))
    protocol.receive_text(json.dumps({"type": "stop"}))
    with pytest.raises(jp.ProtocolError, match="input after stop"):
        protocol.receive_text(input_message(0.1))


def test_the_input_message_is_read_as_16_bit_pcm():
    protocol = jp.JamProtocol()
    protocol.receive_text(json.dumps({"type": "start"}))
    samples = np.array([[0, 16384], [-32768, 32767]], dtype="<i2")  # two frames, stereo
    command = protocol.receive_text(json.dumps({"type": "input", "sample_rate": 44100, "channels": 2, "time": 1.5,
                                                "audio": base64.b64encode(samples.tobytes()).decode()}))
    assert isinstance(command, jp.Input) and command.sample_rate == 44100 and command.time == 1.5
    assert command.samples.shape == (2, 2)
    assert np.allclose(command.samples, [[0, -1.0], [0.5, 32767 / 32768]])
