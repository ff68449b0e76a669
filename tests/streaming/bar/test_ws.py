"""/ws/jam `mode: "bar"` and the `/jam/*` HTTP routes with clients written from magenta-retry's documented messages
(github betweentwomidnights/magenta-rt: app.py's ws_jam and jam_* handlers, docs/api_http.md), against a running
sidecar on 127.0.0.1: exact chunk lengths, attach by session_id after a drop, backpressure, reseed and splice."""

import base64
import io
import json
import math
import time
import typing as tp
from fractions import Fraction

import numpy as np
import pytest
import requests
import soundfile as sf
from websockets.sync.client import connect

from tests.support.helpers import wait_until
from tests.support.servers import http_url, start_server, ws_url


@pytest.fixture(scope="module")
def server_config() -> dict:
    return {"resume_seconds": 30}


def loop_file(seconds=2.0, rate=44100):
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * math.pi * 110 * t) * (np.sin(2 * math.pi * 2 * t) > 0)
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([tone, tone], axis=1), rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def samples_per_bar(rate, bpm, beats_per_bar):
    return Fraction(rate * 60 * beats_per_bar) / Fraction(str(bpm))


def start_message(bpm=120, rate=48000, **params):
    return {"type": "start", "mode": "bar", "binary_audio": False,
            "loop_audio_b64": base64.b64encode(loop_file()).decode(),
            "params": {"bpm": bpm, "beats_per_bar": 1, "bars_per_chunk": 1, "target_sr": rate, **params}}


def receive(ws, timeout=60):
    message = ws.recv(timeout=timeout)
    return message if isinstance(message, bytes) else json.loads(message)


def next_of(ws, kind, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = receive(ws, deadline - time.monotonic())
        if isinstance(message, dict) and message["type"] == kind:
            return message
    raise TimeoutError(kind)


def wav_of(b64):
    samples, rate = sf.read(io.BytesIO(base64.b64decode(b64)), dtype="float32", always_2d=True)
    return samples, rate


def check_chunk(chunk, rate, bpm, beats_per_bar=1, bars=1):
    """Chunk k is samples [round(k*B*S), round((k+1)*B*S)) of one stream (magenta-retry's BarClock)."""
    spb = samples_per_bar(rate, bpm, beats_per_bar)
    k = chunk["index"]
    expected = round((k + 1) * bars * spb) - round(k * bars * spb)
    samples, got_rate = wav_of(chunk["audio_base64"])
    meta = chunk["metadata"]
    assert got_rate == rate == meta["sample_rate"] and samples.shape == (expected, 2) == (meta["total_samples"], 2)
    assert meta["bars"] == bars and meta["beats_per_bar"] == beats_per_bar and meta["bpm"] == bpm
    assert abs(meta["seconds_per_bar"] - 60 * beats_per_bar / bpm) < 1e-9
    return samples


@pytest.mark.parametrize("bpm", [120, 93.5, 173])
@pytest.mark.parametrize("rate", [32000, 48000])
def test_forty_chunks_are_sample_exact(server, bpm, rate):
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(json.dumps(start_message(bpm, rate)))
        started = receive(ws)
        assert started["type"] == "started" and started["mode"] == "bar" and started["session_id"]
        total = 0
        for k in range(40):
            chunk = next_of(ws, "chunk")
            assert chunk["index"] == k
            total += check_chunk(chunk, rate, bpm).shape[0]
        assert total == round(40 * samples_per_bar(rate, bpm, 1))  # no drift after 40 chunks
        ws.send(json.dumps({"type": "stop"}))
        assert next_of(ws, "stopped")["type"] == "stopped"


def test_binary_chunks_update_ping_reseed_splice(server):
    message = start_message(93.5, 48000, loudness_mode="auto", styles="jazz")
    message["binary_audio"] = True
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(json.dumps(message))
        sid = receive(ws)["session_id"]
        frame = receive(ws)
        assert isinstance(frame, bytes)
        meta = receive(ws)
        assert meta["type"] == "chunk_meta" and meta["index"] == 0
        assert sf.read(io.BytesIO(frame))[0].shape[0] == meta["metadata"]["total_samples"]
        ws.send(json.dumps({"type": "ping"}))
        ws.send(json.dumps({"type": "update", "styles": "rock", "temperature": 0.9, "topk": 20}))
        ws.send(json.dumps({"type": "reseed", "session_id": sid,
                            "loop_audio_b64": base64.b64encode(loop_file(1.5, 32000)).decode()}))
        ws.send(json.dumps({"type": "reseed_splice", "session_id": sid, "anchor_bars": 2.0,
                            "combined_audio_b64": base64.b64encode(loop_file(3.0)).decode()}))
        ws.send(json.dumps({"type": "update", "bpm": 100}))  # not steerable: an error, nothing changes
        seen, indexes = [], []
        deadline = time.monotonic() + 60
        while len(indexes) < 8 and time.monotonic() < deadline:
            message = receive(ws)
            if isinstance(message, dict) and message["type"] == "chunk_meta":
                indexes.append(message["index"])
                spb = samples_per_bar(48000, 93.5, 1)
                assert message["metadata"]["total_samples"] == round((message["index"] + 1) * spb) - \
                    round(message["index"] * spb)
            elif isinstance(message, dict):
                seen.append(message)
        types = [(m["type"], m.get("reseeded"), m.get("splice")) for m in seen]
        assert ("pong", None, None) in types and ("status", True, None) in types and ("status", None, 2.0) in types
        assert any(m["type"] == "status" and m.get("ok") for m in seen)
        assert any(m["type"] == "error" and "bpm" in m["error"] for m in seen)
        assert indexes == list(range(1, 9))
        ws.send(json.dumps({"type": "consume", "session_id": sid, "chunk_index": 7}))
        assert wait_until(lambda: status(server, sid)["last_consumed_index"] == 7, timeout=10)
        ws.send(json.dumps({"type": "stop"}))
        next_of(ws, "stopped")


def test_a_30_s_48_khz_stereo_loop_fits_in_one_message(server):
    message = start_message(120, 48000)
    message["loop_audio_b64"] = base64.b64encode(loop_file(30.0, 48000)).decode()
    assert len(json.dumps(message)) > 7_500_000
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(json.dumps(message))
        assert receive(ws)["type"] == "started"
        check_chunk(next_of(ws, "chunk"), 48000, 120)
        ws.send(json.dumps({"type": "reseed", "session_id": "x" * 8, "loop_audio_b64": message["loop_audio_b64"]}))
        assert "Session not found" in next_of(ws, "error")["error"]
        ws.send(json.dumps({"type": "stop"}))
        next_of(ws, "stopped")


def test_attach_by_session_id_after_a_dropped_socket(server):
    with connect(ws_url(server), max_size=None) as first:
        first.send(json.dumps(start_message(120, 32000)))
        sid = receive(first)["session_id"]
        got = [next_of(first, "chunk")["index"] for _ in range(2)]
        first.close(code=1001)  # going away: a drop, not the end of the session
    assert got == [0, 1]
    with connect(ws_url(server), max_size=None) as second:
        second.send(json.dumps({"type": "start", "mode": "bar", "session_id": sid}))
        started = receive(second)
        assert started == {"type": "started", "session_id": sid, "mode": "bar"}
        chunks = [next_of(second, "chunk") for _ in range(3)]
        indexes = [c["index"] for c in chunks]
        assert indexes[0] >= 2 and indexes == list(range(indexes[0], indexes[0] + 3))  # from the next undelivered
        for chunk in chunks:
            check_chunk(chunk, 32000, 120)
        second.send(json.dumps({"type": "stop"}))
        next_of(second, "stopped")
    assert requests.get(http_url(server, "/jam/status"), params={"session_id": sid}, timeout=10).status_code == 404


def test_bad_bar_messages_get_errors_and_the_session_goes_on(server):
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "mode": "bar", "params": {}}))
        assert "loop_audio_b64 required" in receive(ws)["error"]
        ws.send(json.dumps({"type": "start", "mode": "bar", "session_id": "nobody"}))
        assert "Session not found" in receive(ws)["error"]
        ws.send(json.dumps(start_message(5, 32000)))
        assert "bpm" in receive(ws)["error"]
        bad_loop = start_message()
        bad_loop["loop_audio_b64"] = base64.b64encode(b"not audio").decode()
        ws.send(json.dumps(bad_loop))
        assert "loop_audio" in receive(ws)["error"]
        ws.send(json.dumps(start_message(120, 32000)))
        assert receive(ws)["type"] == "started"
        ws.send(json.dumps({"type": "consume", "session_id": "someone-else", "chunk_index": 0}))
        ws.send(json.dumps({"type": "dance"}))
        ws.send("not json")
        errors = [m for m in (receive(ws) for _ in range(6)) if isinstance(m, dict) and m["type"] == "error"]
        assert len(errors) == 3
        assert next_of(ws, "chunk")["type"] == "chunk"
        ws.send(json.dumps({"type": "stop"}))
        next_of(ws, "stopped")


class Deliveries:
    """Which chunk each bar session's pump is handing over (BarSession._deliver returns once a listener took it;
    the pump asks for the next chunk only then: the one rule of how far ahead of its listener a session runs)."""

    def __init__(self, monkeypatch) -> None:
        from streaming.bar.session import BarSession

        self.held: dict[object, tp.Optional[int]] = {}  # a session's pump -> the index it waits to hand over
        real = BarSession._deliver

        async def delivering(bar, chunk) -> None:
            self.held[bar.pump] = chunk.index
            try:
                await real(bar, chunk)
            finally:
                self.held[bar.pump] = None

        monkeypatch.setattr(BarSession, "_deliver", delivering)

    def parked_before(self, server, sid: str, index: int) -> bool:
        """Session `sid` made chunks 0..index-1 and waits for a listener to take chunk index-1 before it may ask
        for chunk `index`: no chunk is made without a pull."""
        jam = server.registry.get(sid)
        return jam is not None and self.held.get(jam.pump) == index - 1 and jam.pump.generated == index


def test_http_jam_as_docs_api_http_shows(server, monkeypatch):
    deliveries = Deliveries(monkeypatch)
    start = requests.post(http_url(server, "/jam/start"), data={"bpm": "120", "bars_per_chunk": "2",
                                                                "beats_per_bar": "1", "target_sample_rate": "48000"},
                          files={"loop_audio": ("loop.wav", loop_file(), "audio/wav")}, timeout=60)
    assert start.status_code == 200, start.text
    sid = start.json()["session_id"]
    try:
        # backpressure: nothing pulled, so one chunk is made and the pump parks before asking for the second
        assert wait_until(lambda: deliveries.parked_before(server, sid, 1), timeout=30), deliveries.held
        assert status(server, sid)["last_generated_index"] == 0
        for k in range(3):
            chunk = requests.get(http_url(server, "/jam/next"), params={"session_id": sid}, timeout=60).json()["chunk"]
            assert chunk["index"] == k
            check_chunk(chunk, 48000, 120, bars=2)
        assert requests.post(http_url(server, "/jam/consume"), data={"session_id": sid, "chunk_index": "2"},
                             timeout=10).json() == {"consumed": 2}
        assert wait_until(lambda: deliveries.parked_before(server, sid, 4), timeout=30), deliveries.held
        now = status(server, sid)
        assert now["last_generated_index"] == 3 and now["last_delivered_index"] == 2 and now["buffer_ahead"] == 1
        assert now["running"] and now["bpm"] == 120 and now["bars_per_chunk"] == 2 and now["seconds_per_bar"] == 0.5
        updated = requests.post(http_url(server, "/jam/update"), data={"session_id": sid, "styles": "techno",
                                                                       "temperature": "0.8"}, timeout=10)
        assert updated.json() == {"ok": True}
        assert requests.post(http_url(server, "/jam/update"), data={"session_id": sid, "topk": "0"},
                             timeout=10).status_code == 400
        assert requests.post(http_url(server, "/jam/reseed"), data={"session_id": sid},
                             files={"loop_audio": ("l.wav", loop_file(1.0), "audio/wav")}, timeout=60).json() == \
            {"ok": True}
        assert requests.post(http_url(server, "/jam/reseed_splice"), data={"session_id": sid, "anchor_bars": "1"},
                             timeout=60).json() == {"ok": True, "anchor_bars": 1.0}
        for k in range(3, 6):
            chunk = requests.get(http_url(server, "/jam/next"), params={"session_id": sid}, timeout=60).json()["chunk"]
            assert chunk["index"] == k
            check_chunk(chunk, 48000, 120, bars=2)
        monkeypatch.setattr("streaming.bar.http.NEXT_TIMEOUT_SECONDS", 0.0)
        late = requests.get(http_url(server, "/jam/next"), params={"session_id": sid}, timeout=60)
        assert late.status_code in (200, 408)
    finally:
        stop = requests.post(http_url(server, "/jam/stop"), json={"session_id": sid}, timeout=10)
    assert stop.json() == {"stopped": True}
    assert requests.get(http_url(server, "/jam/next"), params={"session_id": sid}, timeout=10).status_code == 404
    assert requests.post(http_url(server, "/jam/stop"), json={"session_id": sid}, timeout=10).status_code == 404


def test_a_socket_attaches_to_a_session_started_over_http(server):
    sid = requests.post(http_url(server, "/jam/start"),
                        data={"bpm": "173", "beats_per_bar": "1", "bars_per_chunk": "1"},
                        files={"loop_audio": ("loop.wav", loop_file(), "audio/wav")}, timeout=60).json()["session_id"]
    first = requests.get(http_url(server, "/jam/next"), params={"session_id": sid}, timeout=60).json()["chunk"]
    assert first["index"] == 0 and first["metadata"]["sample_rate"] == 44100  # the loop's rate
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "mode": "bar", "session_id": sid}))
        assert receive(ws)["session_id"] == sid
        try:
            chunk = next_of(ws, "chunk")
        except TimeoutError:
            pytest.fail(f"no chunk after attaching: {status(server, sid)}")
        assert chunk["index"] == 1
        check_chunk(chunk, 44100, 173)
        ws.send(json.dumps({"type": "stop"}))
        next_of(ws, "stopped")


def test_a_full_server_answers_429(server, engine):
    sids = []
    try:
        for _ in range(engine.config.max_sessions):
            answer = requests.post(http_url(server, "/jam/start"), data={"bpm": "120"},
                                   files={"loop_audio": ("loop.wav", loop_file(), "audio/wav")}, timeout=60)
            sids.append(answer.json()["session_id"])
        full = requests.post(http_url(server, "/jam/start"), data={"bpm": "120"},
                             files={"loop_audio": ("loop.wav", loop_file(), "audio/wav")}, timeout=60)
        assert full.status_code == 429 and "concurrency_limit_reached" in full.json()["detail"]
        with connect(ws_url(server), max_size=None) as ws:
            ws.send(json.dumps(start_message()))
            assert receive(ws) == {"type": "error", "error": "concurrency_limit_reached",
                                   "limit": engine.config.max_sessions}
    finally:
        for sid in sids:
            requests.post(http_url(server, "/jam/stop"), json={"session_id": sid}, timeout=10)
    assert wait_until(lambda: engine.sessions_open == 0, timeout=10)


def status(server, sid):
    answer = requests.get(http_url(server, "/jam/status"), params={"session_id": sid}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_bar_session_is_recorded(server):
    """The recording (streaming.sessions.recording) keeps a bar session's model tokens; its length is the bars sent."""
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(json.dumps(start_message(120, 48000)))
        sid = receive(ws)["session_id"]
        seconds = sum(check_chunk(next_of(ws, "chunk"), 48000, 120).shape[0] / 48000 for _ in range(3))
        ws.send(json.dumps({"type": "stop"}))
        next_of(ws, "stopped")
    meta = requests.get(http_url(server, f"/sessions/{sid}"), timeout=10).json()
    assert meta["kind"] == "bar" and meta["chunks"] >= 3 and not meta["live"]
    assert seconds - 0.01 <= meta["seconds"] <= seconds + 0.6  # and the chunk made ahead, if any
    audio = requests.get(http_url(server, f"/sessions/{sid}/recording"), params={"format": "wav"}, timeout=60)
    samples, rate = sf.read(io.BytesIO(audio.content), always_2d=True)
    assert rate == 32000 and abs(samples.shape[0] / rate - meta["seconds"]) < 0.01


def test_a_bar_socket_without_a_session_idles_out(engine):
    from websockets.exceptions import ConnectionClosed

    running = start_server(engine, idle_seconds=1.0)
    try:
        with connect(ws_url(running), max_size=None) as ws:
            ws.send(json.dumps({"type": "start", "mode": "bar", "params": {}}))
            assert "loop_audio_b64 required" in receive(ws)["error"]
            with pytest.raises(ConnectionClosed) as closed:
                receive(ws, timeout=10)
            assert closed.value.rcvd.code == 1008
    finally:
        running.stop()


def test_an_http_session_nobody_polls_frees_its_slot(engine):
    running = start_server(engine, resume_seconds=1.0)
    try:
        started = requests.post(http_url(running, "/jam/start"), data={"bpm": "120"},
                                files={"loop_audio": ("loop.wav", loop_file(), "audio/wav")}, timeout=60)
        sid = started.json()["session_id"]
        assert engine.sessions_open == 1
        assert wait_until(lambda: engine.sessions_open == 0, timeout=10)  # held 1 s after its last request
        assert requests.get(http_url(running, "/jam/next"), params={"session_id": sid}, timeout=10).status_code == 404
    finally:
        running.stop()
