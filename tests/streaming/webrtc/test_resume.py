"""WebRTC sessions that outlive their peer: a new aiortc peer takes a session over by its id
(streaming.sessions.registry)."""

import asyncio

import httpx
import numpy as np
import pytest

from tests.support.helpers import wait_until
from tests.support.servers import http_url, sessions
from tests.support.webrtc_client import PARAMS, SERVER_CONFIG, JamClient, event

pytestmark = pytest.mark.usefixtures("loopback")


@pytest.fixture(scope="module")
def server_config() -> dict:
    return SERVER_CONFIG


def test_a_new_offer_with_the_session_id_replaces_the_peer(server, engine):
    """Peer A plays; peer B offers with A's session id (as a client that lost its network and came back before the
    server noticed): B plays the same session on the same slot, its chunks go on from A's (indexes continue, no
    fresh context), A's connection is closed, and the session's recording covers both."""
    async def scenario():
        first = JamClient(http_url(server))
        await first.connect(PARAMS)
        started = (await first.message(event("started")))["data"]
        session_id = started["session_id"]
        assert started["resumed"] is False and len(session_id) == 22
        seen = (await first.message(lambda m: event("chunk")(m) and m["data"]["index"] >= 3))["data"]["index"]

        second = JamClient(http_url(server))
        track = await second.connect({"session_id": session_id})
        again = (await second.message(event("started")))["data"]
        assert again["resumed"] is True and again["session_id"] == session_id and again["seed"] == 7
        chunk = (await second.message(event("chunk")))["data"]
        assert chunk["index"] > seen, "the stream went on (a fresh context would count from 0)"
        frames = [await asyncio.wait_for(track.recv(), 5) for _ in range(50)]
        audio = np.concatenate([f.to_ndarray().reshape(-1, 2) for f in frames]).astype(np.float32) / 32768
        assert np.sqrt(np.mean(audio ** 2)) > 0.01
        assert await asyncio.to_thread(wait_until, lambda: first.pc.connectionState == "closed", 10)
        assert sessions(server) == 1  # one slot throughout
        second.send({"type": "stop"})
        assert await second.message(lambda m: m["data"] == "stopped", timeout=5)
        assert await asyncio.to_thread(wait_until, lambda: sessions(server) == 0, 5)
        await first.close()
        await second.close()
        return session_id

    session_id = asyncio.run(scenario())
    assert wait_until(lambda: engine.rows_in_use == 0, 2)
    metadata = httpx.get(f"{http_url(server)}/sessions/{session_id}", timeout=10).json()
    assert metadata["kind"] == "webrtc" and metadata["live"] is False and metadata["chunks"] > 4


def test_resuming_offers_that_cannot_be_served_say_why(server):
    async def scenario():
        client = JamClient(http_url(server))
        unknown = await client.offer({"session_id": "nobody"})
        assert unknown["meta"]["error"] == "unknown_session" and "no session nobody" in unknown["meta"]["detail"]
        mixed = await JamClient(http_url(server)).offer({"session_id": "nobody", "styles": "jazz"})
        assert mixed["meta"]["error"] == "invalid_params" and "only params.session_id" in mixed["meta"]["detail"]
        await client.close()

    asyncio.run(scenario())
    assert wait_until(lambda: sessions(server) == 0, 5)
