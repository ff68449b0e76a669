"""A send-receive offer's microphone into the session: aiortc clients with an audio track, a running sidecar."""

import asyncio

import numpy as np
import pytest

from tests.support.helpers import wait_until
from tests.support.servers import http_url, sessions
from tests.support.webrtc_client import PARAMS, SERVER_CONFIG, ToneTrack, recorded_session

pytestmark = pytest.mark.usefixtures("loopback")
SECONDS = 3.0  # of music received by each client
LOOKAHEAD_SECONDS = 4 / 50  # the codec colours this much audio before a changed frame (engine.work.steering)
SILENT_SECONDS = 0.5  # the microphone's first pieces are zeros: the tone comes in the pieces after them


@pytest.fixture(scope="module")
def server_config() -> dict:
    return SERVER_CONFIG


async def session_audio(server, microphone=None) -> tuple[np.ndarray, dict]:
    """A seeded session played for SECONDS (sending `microphone`): its recording and the `input` event."""
    return await recorded_session(http_url(server), {**PARAMS, "max_decode_frames": 16}, SECONDS, microphone,
                                  timeout=5)


def test_the_microphone_is_mixed_into_the_session_from_where_the_player_heard_it(server, engine):
    """A/B on one seed: the session that heard a tone from the client's microphone (silent for its first 0.5 s, then
    playing on) continues from it; before the place the tone landed (where the track was playing when the
    microphone's first piece came, + the silence), its music is the same."""
    async def scenario():
        plain, _ = await session_audio(server)
        played, placed = await session_audio(server, ToneTrack(silent_seconds=SILENT_SECONDS))
        return plain, played, placed

    plain, played, placed = asyncio.run(scenario())
    assert placed["sample_rate"] == 48000 and placed["channels"] == 2  # aiortc's Opus decoder gives stereo
    length = min(len(plain), len(played))
    differs = np.nonzero(plain[:length] != played[:length])[0]
    assert len(differs), "the microphone was not heard"
    assert differs[0] / 32000 >= placed["start_seconds"] + SILENT_SECONDS - LOOKAHEAD_SECONDS
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
