"""A WebRTC peer that never gets connected gives its slot back soon, against a running sidecar with aiortc clients:
a DTLS failure before the peer ever connected frees it at once, a client gone in the middle of the DTLS handshake
within seconds (streaming.webrtc.peer DTLS_SECONDS), not at the connect timeout or when ICE consent expires."""

import asyncio
import re
import time

import pytest
from aiortc import RTCSessionDescription

from tests.support.helpers import wait_until
from tests.support.servers import http_url, sessions, start_server
from tests.support.webrtc_client import PARAMS, JamClient

pytestmark = pytest.mark.usefixtures("loopback")

LONG_CONNECT = 30.0  # JAM_WEBRTC_CONNECT_SECONDS' default: the slot came back only after this before


def _dtls_transports(client: JamClient) -> set:
    transports = {transceiver.sender.transport for transceiver in client.pc.getTransceivers()}
    return transports | ({client.pc.sctp.transport} if client.pc.sctp else set())


async def slot_back(running, client, since: float) -> float:
    """Seconds from `since` until the server's session slot came back (AssertionError if not before the connect
    timeout would have freed it anyway); the client is closed after."""
    gone = await asyncio.to_thread(wait_until, lambda: sessions(running) == 0, LONG_CONNECT - 5, 0.1)
    waited = time.monotonic() - since
    await client.close()
    assert gone, "the slot came back only at the connect timeout, or never"
    return waited


def played(running, scenario) -> float:
    """Runs `scenario()` (which returns `slot_back`'s seconds), then stops the server whatever happened."""
    try:
        return asyncio.run(scenario())
    finally:
        running.stop()

def test_client_gone_mid_dtls_frees_its_slot_within_seconds(engine):
    """A client whose ICE connected but that never answers DTLS (it closed mid-handshake: nothing is sent) gives
    its slot back DTLS_SECONDS after ICE connected, not after the connect timeout or ICE consent (~30 s)."""
    from streaming.webrtc.peer import DTLS_SECONDS

    running = start_server(engine, webrtc_connect_timeout=LONG_CONNECT)

    async def scenario():
        client = JamClient(http_url(running))
        reply = await client.offer(PARAMS)
        for transport in _dtls_transports(client):  # this client's DTLS never starts; the server's waits
            transport.start = lambda *args, **kwargs: asyncio.sleep(3600)
        await client.pc.setRemoteDescription(RTCSessionDescription(**reply))
        while client.pc.iceConnectionState != "completed":
            await asyncio.sleep(0.01)
        assert sessions(running) == 1
        return await slot_back(running, client, since=time.monotonic())

    waited = played(running, scenario)
    assert waited < DTLS_SECONDS + 10, waited
    assert wait_until(lambda: engine.rows_in_use == 0, 2)


def test_dtls_failure_before_connecting_frees_the_slot_at_once(engine):
    """DTLS fails (the client's certificate does not match the offer's fingerprint): the peer connection reports
    "failed" before it ever connected, and the slot comes back then, not at the connect timeout."""
    running = start_server(engine, webrtc_connect_timeout=LONG_CONNECT)

    async def scenario():
        client = JamClient(http_url(running))
        await client.pc.setLocalDescription(await client.pc.createOffer())
        sdp = re.sub(r"a=fingerprint:sha-256 [0-9A-F:]+", "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
                     client.pc.localDescription.sdp)
        reply = await client.post("/webrtc/offer", {"sdp": sdp, "type": "offer", "webrtc_id": client.webrtc_id,
                                                    "params": PARAMS})
        await client.pc.setRemoteDescription(RTCSessionDescription(**reply))
        return await slot_back(running, client, since=time.monotonic())

    waited = played(running, scenario)
    assert waited < 10, waited
    assert wait_until(lambda: engine.rows_in_use == 0, 2)
