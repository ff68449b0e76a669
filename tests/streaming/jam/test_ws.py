"""The /ws/jam sidecar with real WebSocket clients against a running server on 127.0.0.1."""

import io
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from streaming.jam import protocol as jp
from tests.support.helpers import offline_decode, wait_until
from tests.support.jam_client import (
    START,
    decode_chunk,
    messages_until,
    next_of,
    receive_json,
    run_seed_client,
    seed_client_script,
)
from tests.support.servers import running_server, sessions, start_server, ws_url


def test_start_chunks_update_ping_stop(server):
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps(START))
        started = receive_json(ws)
        assert started == {"type": "started", "mode": "rt", "session_id": started["session_id"]}
        assert len(started["session_id"]) == 22  # 128 random bits, base64url
        status = receive_json(ws)
        assert status["type"] == "status" and status["status"] == "playing"
        for _ in range(3):
            chunk = next_of(ws, "chunk")
            samples, rate = decode_chunk(chunk)
            meta = chunk["metadata"]
            assert rate == meta["sample_rate"] == 32000
            assert meta["chunk_frames"] == 20 and meta["chunk_seconds"] == 0.8
            assert len(samples) == round((meta["chunk_seconds"] + meta["crossfade_seconds"]) * rate)
            assert "noise" in meta["notice"]
        ws.send(json.dumps({"type": "update", "styles": "metal", "temperature": 0.9, "topk": 7,
                            "max_decode_frames": 10}))
        status = next_of(ws, "status")
        assert status["status"] == "updated"
        assert status["changed"] == ["max_decode_frames", "style_weights", "styles", "temperature", "topk"]
        metas = [next_of(ws, "chunk")["metadata"] for _ in range(3)]
        assert metas[-1]["styles"] == "metal" and metas[-1]["topk"] == 7 and metas[-1]["chunk_frames"] == 10
        sent = time.monotonic()
        ws.send(json.dumps({"type": "ping"}))
        next_of(ws, "pong")
        assert time.monotonic() - sent < 0.1
        ws.send(json.dumps({"type": "stop"}))
        next_of(ws, "stopped")
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=10)
    assert wait_until(lambda: sessions(server) == 0, 2)


def test_binary_audio_frames_then_chunk_meta(server):
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({**START, "binary_audio": True}))
        next_of(ws, "status")
        for _ in range(2):
            frame = ws.recv(timeout=60)
            assert isinstance(frame, bytes) and frame[:4] == b"RIFF"
            meta = json.loads(ws.recv(timeout=10))
            assert meta["type"] == "chunk_meta"
            samples, rate = sf.read(io.BytesIO(frame), always_2d=True)
            assert rate == meta["metadata"]["sample_rate"]
            assert len(samples) == round((meta["metadata"]["chunk_seconds"] +
                                          meta["metadata"]["crossfade_seconds"]) * rate)


def test_seed_browser_overlap_add_is_seamless(server, engine):
    """What the seed's browser client plays (linear fades over XFADE = 25 ms, each chunk scheduled dur - XFADE
    later) is one offline decode of the session's tokens, overall and at every chunk boundary, but for the 16-bit
    WAV rounding (about 80 dB here; decoding each chunk without its left context measured 38 dB at the
    boundaries). The wire carries audio only: the tokens are those of the same seeded session on the engine."""
    xfade = 0.025
    params = {**START["params"], "seed": 11}
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({**START, "params": params}))
        chunks = [decode_chunk(next_of(ws, "chunk")) for _ in range(5)]
    rate = chunks[0][1]
    fade = int(round(xfade * rate))
    total = sum(len(c) - fade for c, _ in chunks) + fade
    mixed = np.zeros(total)
    position = 0
    boundaries = []
    for samples, _ in chunks:
        gain = np.ones(len(samples))
        gain[:fade] = np.linspace(0, 1, fade)
        gain[-fade:] = np.linspace(1, 0, fade)
        mixed[position:position + len(samples)] += gain * samples
        position += len(samples) - fade
        boundaries.append(position)
    settings, _ = jp.settings_from(START["params"])
    session = engine.open_session(settings, seed=11)
    try:
        tokens = torch.cat([session.next_chunk().result(timeout=60).frames for _ in range(5)], dim=-1)
    finally:
        session.close()
    offline = offline_decode(engine, tokens)[0].double().numpy()

    def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
        return 10 * np.log10(np.mean(reference ** 2) / max(np.mean((test - reference) ** 2), 1e-20))

    inner = slice(fade, total - fade)  # the first fade-in and the last fade-out have nothing to blend with
    assert snr_db(offline[inner], mixed[inner]) >= 60
    for boundary in boundaries[:-1]:  # the crossfade and what comes just before it
        around = slice(boundary - 4 * fade, boundary + 2 * fade)
        assert snr_db(offline[around], mixed[around]) >= 60, boundary


def test_ping_answers_fast_while_a_chunk_generates(server):
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({**START, "params": {**START["params"], "max_decode_frames": 50}}))
        next_of(ws, "chunk")  # the next one is generating now
        delays = []
        for _ in range(5):
            sent = time.monotonic()
            ws.send(json.dumps({"type": "ping"}))
            next_of(ws, "pong")
            delays.append(time.monotonic() - sent)
        assert max(delays) < 0.1, delays


def test_realtime_pace_stays_about_one_chunk_ahead(server):
    params = {**START["params"], "pace": "realtime", "max_decode_frames": 10}  # 0.4 s chunks
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({**START, "params": params}))
        first = next_of(ws, "chunk")
        started = time.monotonic()
        received = first["metadata"]["chunk_seconds"]
        while time.monotonic() - started < 3.0:
            received += next_of(ws, "chunk")["metadata"]["chunk_seconds"]
            ahead = received - (time.monotonic() - started)
            assert ahead <= 2 * 0.4 + 0.15, ahead
        ws.send(json.dumps({"type": "update", "pace": "asap"}))
        next_of(ws, "status")
        flipped = time.monotonic()
        asap = 0.0
        while time.monotonic() - flipped < 2.0:
            asap += next_of(ws, "chunk")["metadata"]["chunk_seconds"]
        assert asap > 2.0 * 1.5  # the demo model generates far faster than real time


@pytest.mark.parametrize(("message", "error"), [
    ("not json", "not valid JSON"),
    (json.dumps({"type": "start"}), "already received"),
    (json.dumps({"type": "update", "topk": 0}), "topk must be within [1, 2048]"),
    ("{\"type\": \"update\", \"topk\": " + "9" * 400 + "}", "topk must be within [1, 2048]"),
    (json.dumps({"type": "update", "styles": "word " * 600}), "the text encoder takes at most 512"),
    (json.dumps({"type": "update", "styles": "a,b", "style_weights": "0,0"}), "all zero"),
    (json.dumps({"type": "nope"}), "unknown message type"),
    (json.dumps({"type": "ping", "pad": "x" * 70000}), "message too large"),
])
def test_bad_input_while_playing_is_refused_with_a_status_and_the_stream_continues(server, message, error):
    """Never an `error` while the session plays on: the seed's client ends its loop on one."""
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(json.dumps(START))
        next_of(ws, "chunk")
        ws.send(message)
        seen = messages_until(ws, lambda m: m["type"] in ("status", "error") and m.get("status") != "playing")
        assert seen[-1]["type"] == "status" and seen[-1]["status"] == "refused" and error in seen[-1]["error"]
        next_of(ws, "chunk")
        next_of(ws, "chunk")


@pytest.mark.parametrize(("message", "error"), [
    (json.dumps({"type": "update", "topk": 3}), "update before start"),
    (json.dumps({"type": "stop"}), "stop before start"),
    (json.dumps({"type": "start", "params": {"topk": 0}}), "topk must be within [1, 2048]"),
])
def test_a_request_that_fails_with_no_session_gets_an_error(server, message, error):
    with connect(ws_url(server)) as ws:
        ws.send(message)
        assert error in next_of(ws, "error")["error"]
    assert sessions(server) == 0


def test_binary_frame_from_client_is_refused(server):
    with connect(ws_url(server)) as ws:
        ws.send(b"\x00\x01")
        assert "binary frames are not accepted" in next_of(ws, "error")["error"]


def test_session_limit(server):
    with connect(ws_url(server)) as first, connect(ws_url(server)) as second:
        for ws in (first, second):
            ws.send(json.dumps(START))
            next_of(ws, "chunk")
        with connect(ws_url(server)) as third:  # connecting takes no slot; starting does
            third.send(json.dumps({"type": "ping"}))
            assert receive_json(third) == {"type": "pong"}
            third.send(json.dumps(START))
            assert receive_json(third) == {"type": "error", "error": "concurrency_limit_reached", "limit": 2}
            with pytest.raises(ConnectionClosed):
                third.recv(timeout=5)
            assert third.close_code == 1013
    assert wait_until(lambda: sessions(server) == 0, 2)


def test_token_is_required_when_configured(engine):
    running = start_server(engine, token="s3cret")
    try:
        with connect(f"ws://127.0.0.1:{running.port}/ws/jam") as ws:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            assert ws.close_code == 1008
        with connect(f"ws://127.0.0.1:{running.port}/ws/jam?token=wrong") as ws:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            assert ws.close_code == 1008
        for kwargs in ({"uri": f"ws://127.0.0.1:{running.port}/ws/jam?token=s3cret"},
                       {"uri": f"ws://127.0.0.1:{running.port}/ws/jam",
                        "additional_headers": {"Authorization": "Bearer s3cret"}}):
            with connect(**kwargs) as ws:
                ws.send(json.dumps({"type": "ping"}))
                assert receive_json(ws) == {"type": "pong"}
    finally:
        running.stop()


def test_the_seed_python_client_receives_chunks(server, tmp_path):
    lines = run_seed_client(ws_url(server), tmp_path)
    assert len(lines) == 2
    assert all(line.endswith(" 32000") and "(64800,)" in line for line in lines)  # 2 s + 25 ms at 32 kHz


def test_the_seed_python_client_plays_on_through_a_generation_failure(engine, tmp_path, monkeypatch):
    """The seed's client leaves its loop on any `error`: a failure the session recovers from is a `status`, so the
    client (unchanged) keeps playing the restarted stream instead of quitting while its session plays on."""
    from engine.runtime.streams import Stream

    real, armed, failed = Stream.accept_tokens, threading.Event(), threading.Event()

    def accept(self, tokens):  # the seed client's styles ("warmup") fail once, when armed
        if armed.is_set() and not failed.is_set() and "warmup" in self.conditioning.texts:
            failed.set()
            raise RuntimeError("injected transient failure")
        return real(self, tokens)

    monkeypatch.setattr(Stream, "accept_tokens", accept)
    with running_server(engine) as running:
        script = seed_client_script(ws_url(running), tmp_path)
        process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        try:
            lines = [process.stdout.readline()]
            armed.set()
            while len(lines) < 4 and (line := process.stdout.readline()):
                lines.append(line)
        finally:
            process.kill()
            process.wait()
    assert failed.is_set(), "no failure was injected"
    assert len(lines) == 4 and all(line.startswith("chunk") for line in lines), lines
