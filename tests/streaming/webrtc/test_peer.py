"""WebRTC playback against a running sidecar on 127.0.0.1, with aiortc clients (FastRTC's contract)."""

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from tests.support.helpers import wait_until
from tests.support.servers import http_url, sessions, start_server
from tests.support.webrtc_client import CONNECT_TIMEOUT, PARAMS, SERVER_CONFIG, JamClient, event

pytestmark = pytest.mark.usefixtures("loopback")


@pytest.fixture(scope="module")
def server_config() -> dict:
    return SERVER_CONFIG


def test_plays_real_time_opus_and_steers_over_the_data_channel(server, engine):
    async def scenario():
        client = JamClient(http_url(server))
        track = await client.connect(PARAMS)
        started = await client.message(event("started"))
        assert started["data"]["audio"] == {"codec": "opus", "sample_rate": 48000, "channels": 2, "frame_ms": 20,
                                            "bitrate": 128000, "application": "audio"}
        assert started["data"]["seed"] == 7 and "noise" in started["data"]["notice"]
        frames, first_at = [], None
        while sum(f.samples for f in frames) < 5 * 48000:
            frame = await asyncio.wait_for(track.recv(), 5)
            first_at = first_at or time.monotonic()
            frames.append(frame)
        wall = time.monotonic() - first_at
        assert all(f.sample_rate == 48000 and f.layout.name == "stereo" and len(f.layout.channels) == 2
                   for f in frames)
        audio = np.concatenate([f.to_ndarray().reshape(-1, 2) for f in frames]).astype(np.float32) / 32768
        assert np.sqrt(np.mean(audio ** 2)) > 0.01  # the demo's noise, not silence
        assert 4.5 < wall < 6.5, wall  # paced by timestamps: neither a burst nor a stall

        client.send({"type": "update", "styles": "metal", "topk": 7})
        ack = (await client.message(event("updated")))["data"]
        assert ack["changed"] == ["style_weights", "styles", "topk"] and ack["params"]["styles"] == "metal"
        heard_from = ack["applies_from_chunk"]
        assert isinstance(heard_from, int) and 0 <= ack["offset_seconds"] < 0.32
        assert 0 < ack["heard_in_seconds"] < 1.0  # the track's lead and part of one 0.32 s unit
        chunk = await client.message(lambda m: event("chunk")(m) and m["data"]["index"] > heard_from)
        assert chunk["data"]["styles"] == "metal"  # the unit after the one it starts in is all new
        previous = await client.message(lambda m: event("chunk")(m) or m["type"] == "error", timeout=5)
        assert previous["type"] == "log"  # nothing went wrong meanwhile

        client.send({"type": "update", "topk": 0})
        assert (await client.message(lambda m: m["type"] == "error"))["data"].startswith("topk must be within")
        client.send({"type": "ping"})
        assert await client.message(lambda m: m["data"] == "pong", timeout=2)
        more = [await asyncio.wait_for(track.recv(), 2) for _ in range(25)]  # the music goes on
        assert len(more) == 25

        hook = await client.post("/webrtc/input", {"webrtc_id": client.webrtc_id, "temperature": 0.9})
        assert hook["status"] == "success" and hook["data"]["changed"] == ["temperature"]
        assert (await client.message(event("updated")))["data"]["params"]["temperature"] == 0.9
        bad = await client.post("/webrtc/input", {"webrtc_id": client.webrtc_id, "guidance_weight": -1})
        assert bad["meta"]["error"] == "invalid_params" and "guidance_weight" in bad["meta"]["detail"]
        unknown = await client.post("/webrtc/input", {"webrtc_id": "nobody", "topk": 3})
        assert unknown == {"status": "failed", "meta": {"error": "unknown_connection"}}

        assert sessions(server) == 1
        client.send({"type": "stop"})
        assert (await client.message(lambda m: m["data"] == "stopped", timeout=5))
        assert await asyncio.to_thread(wait_until, lambda: sessions(server) == 0, 5)
        await client.close()

    asyncio.run(scenario())
    assert wait_until(lambda: engine.rows_in_use == 0, 2)


def test_fastrtc_clients_handshake_is_answered_as_fastrtc_answers_it(server):
    """FastRTC's server answers every data-channel message with {"type": "log", "data": "Server received: ..."}
    (backend/fastrtc/webrtc_connection_mixin.py), the handshake included; never an error."""
    async def scenario():
        client = JamClient(http_url(server), handshake=True)
        await client.connect(PARAMS)
        seen: list[dict] = []
        await client.message(lambda m: seen.append(m) or event("chunk")(m))  # until the music plays
        await client.close()
        return seen

    seen = asyncio.run(scenario())
    assert {"type": "log", "data": "Server received: handshake"} in seen
    assert [m for m in seen if m["type"] != "log"] == []


def test_generation_falling_behind_carries_silence_and_warns(server, engine):
    """The engine thread stalls (a real job occupies it) longer than the buffer lasts: the track goes on with
    silence, the client is warned, and the music resumes on the same connection."""
    async def scenario():
        client = JamClient(http_url(server))
        track = await client.connect({**PARAMS, "max_decode_frames": 10})  # 0.4 s chunks: under a second buffered
        await client.message(event("chunk"))
        for _ in range(10):
            await asyncio.wait_for(track.recv(), 5)
        stall = engine.lm_worker.call(lambda: time.sleep(2.0))  # the engine thread stalls
        peaks, gaps, last = [], [], time.monotonic()
        while not stall.done() or len(peaks) < 150:
            frame = await asyncio.wait_for(track.recv(), 5)
            gaps.append(time.monotonic() - last)
            last = time.monotonic()
            peaks.append(int(np.abs(frame.to_ndarray()).max()))
        warning = await client.message(lambda m: m["type"] == "warning", timeout=1)
        assert "behind real time" in warning["data"]
        recovered = await client.message(event("recovered"), timeout=5)
        assert 0.5 < recovered["data"]["silence_seconds"] < 2.5
        assert sum(p < 4 for p in peaks) >= 25  # half a second and more of silence went out...
        assert peaks[-1] > 100 and max(gaps) < 0.5  # ...then music again, and frames never stopped flowing
        chunk = await client.message(event("chunk"))
        assert chunk["data"]["underruns"] == 1
        await client.close()

    asyncio.run(scenario())
    assert wait_until(lambda: sessions(server) == 0, 3)


def test_client_close_frees_the_slot(server):
    async def scenario():
        client = JamClient(http_url(server))
        track = await client.connect(PARAMS)
        await asyncio.wait_for(track.recv(), 10)
        assert sessions(server) == 1
        await client.close()
        assert await asyncio.to_thread(wait_until, lambda: sessions(server) == 0, 3)

    asyncio.run(scenario())


@pytest.mark.slow
def test_vanished_client_frees_its_slot_when_ice_consent_expires(server, engine):
    """A client that disappears without closing (its event loop simply stops): ICE consent freshness (RFC 7675,
    about 30 s in aioice) fails the connection and the slot comes back."""
    async def vanish():
        client = JamClient(http_url(server))
        track = await client.connect(PARAMS)
        await asyncio.wait_for(track.recv(), 10)  # returns without close(): no DTLS close_notify ever leaves

    asyncio.run(vanish())
    gone = time.monotonic()
    assert sessions(server) == 1
    assert wait_until(lambda: sessions(server) == 0, 45, interval=0.5)
    assert 10 < time.monotonic() - gone < 45
    assert wait_until(lambda: engine.rows_in_use == 0, 2)


def test_trickled_candidates(server):
    async def scenario():
        client = JamClient(http_url(server))
        reply = await client.offer(PARAMS, without_candidates=True)
        assert reply["type"] == "answer" and "a=candidate:" in reply["sdp"]  # the server's candidates are inside
        for candidate in client.candidates():
            trickled = {"candidate": candidate, "webrtc_id": client.webrtc_id, "type": "ice-candidate"}
            assert await client.post("/webrtc/offer", trickled) == {"status": "success"}
        end = {"candidate": {"candidate": "", "sdpMid": "0"}, "webrtc_id": client.webrtc_id, "type": "ice-candidate"}
        assert await client.post("/webrtc/offer", end) == {"status": "success"}
        malformed = {"candidate": {"candidate": "candidate:nonsense", "sdpMid": "0"}, "webrtc_id": client.webrtc_id,
                     "type": "ice-candidate"}
        assert (await client.post("/webrtc/offer", malformed))["meta"]["error"] == "invalid_candidate"
        stranger = {"candidate": client.candidates()[0], "webrtc_id": "nobody", "type": "ice-candidate"}
        assert await client.post("/webrtc/offer", stranger) == \
            {"status": "failed", "meta": {"error": "unknown_connection"}}
        track = await client.accept(reply)
        assert (await asyncio.wait_for(track.recv(), 10)).sample_rate == 48000
        await client.close()

    asyncio.run(scenario())
    assert wait_until(lambda: sessions(server) == 0, 3)


def test_connection_already_exists(server):
    async def scenario():
        first = JamClient(http_url(server), webrtc_id="same-id")
        await first.connect(PARAMS)
        await first.message(event("chunk"))  # connected, so its close reaches the server (DTLS close_notify)
        second = JamClient(http_url(server), webrtc_id="same-id")
        assert await second.offer(PARAMS) == {"status": "failed", "meta": {"error": "connection_already_exists"}}
        assert sessions(server) == 1
        await second.close()
        await first.close()

    asyncio.run(scenario())
    assert wait_until(lambda: sessions(server) == 0, 3)


@pytest.mark.parametrize(("params", "detail"), [
    ({"topk": 0}, "topk must be within"),
    ({"styles": "a, b", "style_weights": "0,0"}, "all zero"),
    ({"pace": "asap"}, "pace does not apply to WebRTC"),
])
def test_bad_params_fail_without_taking_a_slot(server, params, detail):
    async def scenario():
        client = JamClient(http_url(server))
        reply = await client.offer(params)
        await client.close()
        return reply

    reply = asyncio.run(scenario())
    assert reply["status"] == "failed" and reply["meta"]["error"] == "invalid_params"
    assert detail in reply["meta"]["detail"]
    assert sessions(server) == 0


def test_offer_without_opus_fails_and_gives_the_slot_back(server, engine):
    async def scenario():
        client = JamClient(http_url(server))
        await client.pc.setLocalDescription(await client.pc.createOffer())
        sdp = client.pc.localDescription.sdp.replace("opus/48000/2", "speex/48000/2")
        reply = await client.post("/webrtc/offer", {"sdp": sdp, "type": "offer", "webrtc_id": client.webrtc_id})
        await client.close()
        return reply

    reply = asyncio.run(scenario())
    assert reply["meta"]["error"] == "invalid_request" and "cannot be answered" in reply["meta"]["detail"]
    assert sessions(server) == 0
    assert wait_until(lambda: engine.rows_in_use == 0, 2)


def test_never_connecting_offer_is_dropped_after_the_timeout(server, engine):
    async def scenario():
        client = JamClient(http_url(server))
        assert (await client.offer(PARAMS))["type"] == "answer"
        await client.close()  # the answer is never applied: ICE cannot connect
        assert sessions(server) == 1
        gone = await asyncio.to_thread(wait_until, lambda: sessions(server) == 0, CONNECT_TIMEOUT + 2, 0.05)
        return gone, time.monotonic() - client.offered_at

    gone, after = asyncio.run(scenario())
    assert gone and CONNECT_TIMEOUT - 0.1 < after < CONNECT_TIMEOUT + 2, after
    assert wait_until(lambda: engine.rows_in_use == 0, 2)


@pytest.fixture
def one_slot_engine(demo_dir):
    from engine.config import EngineConfig
    from engine.core import Engine

    engine = Engine.load(demo_dir, device="cpu", config=EngineConfig(max_sessions=1, weight_format="float32"))
    yield engine
    engine.close()


def test_session_limit_is_shared_with_ws_jam(one_slot_engine):
    running = start_server(one_slot_engine, **SERVER_CONFIG)
    try:
        with connect(f"ws://127.0.0.1:{running.port}/ws/jam") as ws:
            ws.send(json.dumps({"type": "start", "params": {"styles": "jazz", "max_decode_frames": 10}}))
            while json.loads(ws.recv(timeout=30))["type"] != "chunk":
                pass

            async def refused():
                client = JamClient(http_url(running))
                reply = await client.offer(PARAMS)
                await client.close()
                return reply

            assert asyncio.run(refused()) == \
                {"status": "failed", "meta": {"error": "concurrency_limit_reached", "limit": 1}}
        assert wait_until(lambda: sessions(running) == 0, 3)

        async def accepted():
            client = JamClient(http_url(running))
            reply = await client.offer(PARAMS)
            await client.close()
            return reply

        assert asyncio.run(accepted())["type"] == "answer"  # the freed slot serves WebRTC
    finally:
        running.stop()


def test_token_is_required_when_configured(engine):
    running = start_server(engine, **SERVER_CONFIG, token="s3cret")
    try:
        async def scenario():
            results = []
            for kwargs in ({}, {"params": {"token": "wrong"}}, {"params": {"token": "s3cret"}},
                           {"headers": {"Authorization": "Bearer s3cret"}}):
                client = JamClient(http_url(running))
                results.append(await client.offer(PARAMS, **kwargs))
                await client.close()
            hook = await JamClient(http_url(running)).post("/webrtc/input", {"webrtc_id": "x", "topk": 3})
            return results, hook

        (missing, wrong, query, bearer), hook = asyncio.run(scenario())
        assert missing["meta"]["error"] == wrong["meta"]["error"] == hook["meta"]["error"] == "unauthorized"
        assert query["type"] == bearer["type"] == "answer"
    finally:
        running.stop()


def test_server_shutdown_ends_peers_and_their_sessions(engine, caplog):
    running = start_server(engine, **SERVER_CONFIG)

    async def scenario():
        client = JamClient(http_url(running))
        track = await client.connect(PARAMS)
        await asyncio.wait_for(track.recv(), 10)
        stopping = time.monotonic()
        await asyncio.to_thread(running.stop)
        await client.close()
        return time.monotonic() - stopping

    try:
        with caplog.at_level("INFO", logger="streaming.webrtc.peer"):
            took = asyncio.run(scenario())
    finally:
        running.stop()
    assert not running.thread.is_alive() and took < 5, took
    assert any("ended: server shutting down" in record.getMessage() for record in caplog.records)
    assert wait_until(lambda: engine.rows_in_use == 0, 2)


def test_a_drain_warns_the_peer_and_ends_it_at_the_deadline(demo_dir):
    """FastRTC's `warning` on the data channel says how long the session has; at the deadline the peer ends."""
    from engine.config import EngineConfig
    from engine.core import Engine

    engine = Engine.load(demo_dir, device="cpu", config=EngineConfig(max_sessions=2))  # drained for good
    running = start_server(engine, **SERVER_CONFIG, drain_seconds=3)

    async def scenario():
        client = JamClient(http_url(running))
        await client.connect(PARAMS)
        await client.message(event("chunk"))
        started = time.monotonic()
        async with httpx.AsyncClient() as http:
            assert (await http.post(f"{http_url(running)}/admin/drain")).json()["draining"] is True
        warning = await client.message(lambda m: m["type"] == "warning" and "draining" in m["data"])
        assert "within 3 s" in warning["data"]
        assert await asyncio.to_thread(wait_until, lambda: engine.sessions_open == 0, 10)
        await client.close()
        return time.monotonic() - started

    try:
        assert 2.5 < asyncio.run(scenario()) < 10
    finally:
        running.stop()
        engine.close()
