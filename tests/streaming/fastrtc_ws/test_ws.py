"""FastRTC's WebSocket transport against a running sidecar, with a real WebSocket client (websockets) speaking
FastRTC's events: send-receive with mu-law both ways, pong, stop, phone mode, a full server, bad frames, resume and
drain."""

import socket
import time

import numpy as np
import pytest
import requests
from websockets.exceptions import ConnectionClosed

from streaming.fastrtc_ws import protocol as fp
from tests.support.fastrtc_ws_client import FRAME_SAMPLES, PARAMS, FastRTCClient, is_media, sine
from tests.support.helpers import wait_until
from tests.support.servers import http_url, sessions, start_server, ws_url

UNIT_SAMPLES = 15360  # one 0.32 s decode unit at 48 kHz (streaming.webrtc.peer.UNIT_SECONDS)


def client(server, path: str = fp.PATH) -> FastRTCClient:
    return FastRTCClient(ws_url(server, path))


def send_receive(server, seconds: float) -> dict:
    """FastRTC's send-receive loop: a 48 kHz sine in 2048-sample media frames at real time, a ping each second,
    everything that arrives read; then an update and a stop. Returns what the test checks."""
    jam = client(server)
    jam.start(PARAMS)
    started = jam.log("started")
    began = time.monotonic()
    pings = sent = 0
    while (elapsed := time.monotonic() - began) < seconds:
        if sent * FRAME_SAMPLES / 48000 <= elapsed:  # the microphone's pace
            jam.media(sine(FRAME_SAMPLES / 48000))
            sent += 1
        if pings <= elapsed:
            jam.send({"event": "ping"})
            pings += 1
        try:
            jam.read(timeout=0.005)
        except TimeoutError:
            pass
    received_seconds = sum(len(a) for a in jam.audio) / 48000
    jam.send({"type": "update", "temperature": 0.9})
    updated = jam.log("updated")
    jam.send({"event": "stop"})
    jam.until(lambda f: f.get("type") == "log" and f["data"] == "stopped", 30)
    with pytest.raises(ConnectionClosed):
        jam.read(timeout=10)
    return {"started": started, "jam": jam, "elapsed": seconds, "received_seconds": received_seconds,
            "pings": pings, "updated": updated, "sent": sent}


def check_send_receive(server, seen: dict) -> None:
    jam, started = seen["jam"], seen["started"]
    assert started["audio"] == {"codec": "mulaw", "sample_rate": 48000, "channels": 1, "input_sample_rate": 48000}
    assert started["seed"] == 7 and started["resumed"] is False and started["websocket_id"] == jam.websocket_id
    assert [f for f in jam.frames if f.get("type") in ("error", "warning")] == []
    # paced near real time: never more than the lead and a unit or two ahead of the clock (generous margins), and
    # audio kept coming (a loaded 2-core machine still generates the demo model several times faster than real time)
    assert seen["received_seconds"] <= seen["elapsed"] + 2.0, seen
    assert seen["received_seconds"] >= 0.3 * seen["elapsed"], seen
    assert {len(a) for a in jam.audio} == {UNIT_SAMPLES}
    audio = np.concatenate(jam.audio).astype(np.float32) / 32768
    assert np.sqrt(np.mean(audio ** 2)) > 0.01, "mu-law decoded back to the session's audio, not silence"
    chunks = [m["data"]["index"] for m in jam.messages if isinstance(m["data"], dict)
              and m["data"].get("event") == "chunk"]
    assert chunks == list(range(len(jam.audio))), "one chunk log per media frame, in order"
    assert sum(1 for f in jam.frames if f == {"event": "pong"}) == seen["pings"]
    assert seen["updated"]["changed"] == ["temperature"]
    assert jam.ws.close_code == 1000
    assert wait_until(lambda: sessions(server) == 0, 5)
    meta = requests.get(http_url(server, f"/sessions/{started['session_id']}"), timeout=10).json()
    assert meta["kind"] == "fastrtc_ws" and meta["live"] is False and meta["chunks"] >= len(jam.audio)


def test_send_receive_with_fastrtcs_events(server):
    check_send_receive(server, send_receive(server, 4.0))


@pytest.mark.slow
def test_twenty_seconds_of_send_receive(server):
    seen = send_receive(server, 20.0)
    check_send_receive(server, seen)
    assert seen["received_seconds"] >= 15.0, seen


def test_phone_mode_speaks_8_khz_with_the_stream_sid(server):
    phone = client(server, fp.PHONE_PATH)
    phone.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})  # what Twilio sends first
    phone.start()
    assert "start needs streamSid" in phone.error()
    assert len(phone.frames) == 1, "Twilio's connected is let be"
    phone.send({"event": "start", "sequenceNumber": "1", "streamSid": "MZ123",  # Twilio's start, in full
                "start": {"streamSid": "MZ123", "accountSid": "AC1", "callSid": "CA1", "tracks": ["inbound"],
                          "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
    assert phone.log("started")["audio"]["sample_rate"] == 8000
    out = phone.until(is_media)
    assert out["streamSid"] == "MZ123" and len(phone.audio[0]) == 2560
    phone.send({"event": "media", "streamSid": "MZ123", "media": {"payload": "//////8="}})  # Twilio's shape
    phone.send({"event": "mark", "streamSid": "MZ123", "mark": {"name": "played"}})
    phone.send({"event": "stop"})
    phone.until(lambda f: f.get("data") == "stopped")
    assert [f for f in phone.frames if f.get("type") == "error"] == [{"type": "error", "data": phone.frames[0]["data"]}]
    phone.close()
    assert wait_until(lambda: sessions(server) == 0, 5)


def test_a_full_server_sends_fastrtcs_message_then_closes(server):
    first, second = client(server), client(server)
    try:
        for jam in (first, second):
            jam.start(PARAMS)
            jam.until(is_media)
        third = client(server)
        third.send({"event": "ping"})
        assert third.read() == {"event": "pong"}, "connecting takes no slot; starting does"
        third.start(PARAMS)
        assert third.read() == {"status": "failed", "meta": {"error": "concurrency_limit_reached", "limit": 2}}
        with pytest.raises(ConnectionClosed):
            third.read(timeout=5)
        assert third.ws.close_code == 1013
    finally:
        first.close()
        second.close()
    assert wait_until(lambda: sessions(server) == 0, 5)


def test_bad_frames_get_an_error_and_the_session_plays_on(server):
    jam = client(server)
    jam.send({"event": "media", "media": {"payload": "AAAA"}})
    assert "media before start" in jam.error()
    jam.start(PARAMS)
    jam.log("started")
    for bad, error in [(b"\x00\x01", "binary frames are not accepted"), ("{oops", "not valid JSON"),
                       ({"event": "dance"}, "unknown event 'dance'"),
                       ({"event": "media", "media": {"payload": "%%%"}}, "not valid base64"),
                       ({"event": "media", "media": {"payload": "A" * 96000}}, "media frame too long"),
                       ({"event": "media", "media": {"payload": "A" * 200_000}}, "message too large"),
                       ({"type": "update", "temperature": "hot"}, "temperature"),
                       ({"event": "start", "websocket_id": "again"}, "already playing")]:
        jam.send(bad)
        assert error in jam.error()
    before = len(jam.audio)
    jam.until(lambda f: is_media(f) and len(jam.audio) >= before + 2)
    chunks = [m["data"]["index"] for m in jam.messages if isinstance(m["data"], dict)
              and m["data"].get("event") == "chunk"]
    assert chunks == list(range(len(chunks))), "the stream went on without a gap or a restart"
    jam.send({"event": "stop"})
    jam.until(lambda f: f.get("data") == "stopped")
    assert wait_until(lambda: sessions(server) == 0, 5)


def test_a_dropped_socket_is_resumed_by_a_start_with_the_session_id(server):
    first = client(server)
    first.start(PARAMS)
    session_id = first.log("started")["session_id"]
    seen = first.log("chunk")["index"]
    first.ws.socket.shutdown(socket.SHUT_RDWR)  # the network goes: no closing handshake
    first.ws.socket.close()
    assert wait_until(lambda: server.registry.held == 1, 10)
    second = client(server, f"{fp.PATH}?session_id={session_id}")  # as behind HAProxy, which routes by it
    second.start({"session_id": session_id})
    again = second.log("started")
    assert again["resumed"] is True and again["session_id"] == session_id and again["seed"] == 7
    assert again["from_chunk"] > seen
    assert second.log("chunk")["index"] == again["from_chunk"], "the stream goes on (a fresh one counts from 0)"
    assert sessions(server) == 1  # one slot throughout
    third = client(server)
    third.start({"session_id": session_id})
    assert "being played by another connection" in third.error()
    second.send({"type": "stop"})
    second.until(lambda f: f.get("data") == "stopped")
    assert wait_until(lambda: sessions(server) == 0, 5)


def test_a_drain_warns_the_socket_and_closes_it_at_the_deadline(demo_dir):
    from engine.config import EngineConfig
    from engine.core import Engine

    engine = Engine.load(demo_dir, device="cpu", config=EngineConfig(max_sessions=2))  # drained for good
    running = start_server(engine, drain_seconds=3)
    try:
        jam = client(running)
        jam.start(PARAMS)
        jam.until(is_media)
        began = time.monotonic()
        assert requests.post(http_url(running, "/admin/drain"), timeout=5).json()["draining"] is True
        warning = jam.until(lambda f: f.get("type") == "warning")["data"]
        assert "draining" in warning and "within 3 s" in warning
        with pytest.raises(ConnectionClosed):
            while True:
                jam.read(timeout=10)
        assert jam.ws.close_code == 1001 and 2.5 < time.monotonic() - began < 10
        assert wait_until(lambda: engine.sessions_open == 0, 5), "a drained socket's session is not held"
    finally:
        running.stop()
        engine.close()


def played_along(server, units: int, with_input: bool) -> FastRTCClient:
    """A seeded session's first `units` media frames, the client sending a sine at real time or nothing."""
    jam = client(server)
    jam.start(PARAMS)
    jam.log("started")
    began, sent = time.monotonic(), 0
    while len(jam.audio) < units:
        if with_input and sent * FRAME_SAMPLES / 48000 <= time.monotonic() - began:
            jam.media(sine(FRAME_SAMPLES / 48000, level=0.8))
            sent += 1
        try:
            jam.read(timeout=0.005)
        except TimeoutError:
            pass
    jam.send({"event": "stop"})
    jam.until(lambda f: f.get("data") == "stopped")
    assert wait_until(lambda: sessions(server) == 0, 5)
    return jam


def test_the_players_media_reaches_the_session_and_changes_what_follows(server):
    """A/B at the same seed: the first unit (asked for before any input) is the same to the sample; the music
    after the player's sine was mixed into the context differs from the session that heard nothing."""
    plain = played_along(server, 12, with_input=False)
    played = played_along(server, 12, with_input=True)
    assert np.array_equal(plain.audio[0], played.audio[0]), "same seed, no input yet: the same audio"
    assert any(not np.array_equal(a, b) for a, b in zip(plain.audio[4:12], played.audio[4:12], strict=True)), \
        "the input never reached the session's context"
    assert [f for f in played.frames if f.get("type") in ("error", "warning")] == [], \
        "input at real time is neither refused nor dropped"


def test_input_faster_than_real_time_is_dropped_with_a_warning_and_the_session_plays_on(server):
    jam = client(server)
    jam.start(PARAMS)
    jam.until(is_media)
    for _ in range(12):  # 12 s of 1 s frames at once: the engine's real-time budget is a few seconds deep
        jam.media(sine(1.0))
    warning = jam.until(lambda f: f.get("type") == "warning")["data"]
    # laid end to end, a burst soon lies too far ahead of the session's audio; beyond that the real-time budget
    assert warning.startswith("input dropped (1 media frame(s)") and \
        ("ahead of the session's audio" in warning or "faster than real time" in warning), warning
    before = len(jam.audio)
    jam.until(lambda f: is_media(f) and len(jam.audio) >= before + 2)
    assert [f for f in jam.frames if f.get("type") == "warning"] == [{"type": "warning", "data": warning}], \
        "told once, not once per frame"
    jam.send({"event": "stop"})
    jam.until(lambda f: f.get("data") == "stopped")
    assert wait_until(lambda: sessions(server) == 0, 5)


def test_fastrtcs_own_stop_sends_stop_and_closes_at_once(server, caplog):
    """FastRTC's docs: `ws.send(JSON.stringify({event: "stop"})); ws.close();`: the session ends, its slot is free,
    and nothing is logged as a failure."""
    jam = client(server)
    jam.start(PARAMS)
    jam.until(is_media)
    jam.send({"event": "stop"})
    jam.close()
    assert wait_until(lambda: sessions(server) == 0, 5)
    assert server.registry.held == 0, "a stopped session is not held"
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
