"""A send-receive offer's microphone into the session: aiortc clients with an audio track, a running sidecar."""

import asyncio
import io

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.support.helpers import wait_until
from tests.support.servers import http_url, sessions
from tests.support.webrtc_client import PARAMS, SERVER_CONFIG, JamClient, ToneTrack, event

pytestmark = pytest.mark.usefixtures("loopback")
SECONDS = 3.0  # of music received by each client
LOOKAHEAD_SECONDS = 4 / 50  # the codec colours this much audio before a changed frame (engine.work.steering)


@pytest.fixture(scope="module")
def server_config() -> dict:
    return SERVER_CONFIG


async def session_audio(server, microphone=None) -> tuple[np.ndarray, dict]:
    """Plays a seeded session for SECONDS (sending `microphone`), stops it, and returns its recording (the tokens
    it generated, decoded afresh) with the data channel's `input` event (None without a microphone)."""
    client = JamClient(http_url(server), microphone=microphone)
    track = await client.connect({**PARAMS, "max_decode_frames": 16})
    session_id = (await client.message(event("started")))["data"]["session_id"]
    heard = 0
    while heard < SECONDS * 48000:
        heard += (await asyncio.wait_for(track.recv(), 5)).samples
    placed = None
    if microphone is not None:
        placed = (await client.message(event("input"), timeout=5))["data"]
    client.send({"type": "stop"})
    await client.message(lambda m: m["data"] == "stopped", timeout=5)
    await client.close()
    async with httpx.AsyncClient(base_url=http_url(server), timeout=60) as http:
        response = await http.get(f"/sessions/{session_id}/recording")
    audio, _ = sf.read(io.BytesIO(response.content), dtype="float32")
    return audio, placed


def test_the_microphone_is_mixed_into_the_session_from_where_the_player_heard_it(server, engine):
    """A/B on one seed: the session that heard a tone from the client's microphone continues from it; before the
    place the input landed (where the track was playing when it came), its music is the same."""
    async def scenario():
        plain, _ = await session_audio(server)
        played, placed = await session_audio(server, ToneTrack())
        return plain, played, placed

    plain, played, placed = asyncio.run(scenario())
    assert placed["sample_rate"] == 48000 and placed["channels"] == 2  # aiortc's Opus decoder gives stereo
    length = min(len(plain), len(played))
    differs = np.nonzero(plain[:length] != played[:length])[0]
    assert len(differs), "the microphone was not heard"
    assert differs[0] / 32000 >= placed["start_seconds"] - LOOKAHEAD_SECONDS
    assert wait_until(lambda: sessions(server) == 0, 5)


def test_a_muted_microphone_changes_nothing(server):
    """FastRTC's send-receive client with its microphone muted sends zeros: the session plays its own music."""
    async def scenario():
        plain, _ = await session_audio(server)
        muted, placed = await session_audio(server, ToneTrack(amplitude=0.0))
        return plain, muted, placed

    plain, muted, placed = asyncio.run(scenario())
    length = min(len(plain), len(muted))
    assert placed is not None and np.array_equal(plain[:length], muted[:length])
