"""The protocols' session states, each an enum with its transitions in one place: bar mode's socket, a WebRTC
peer's connection and when it keeps its session, and the supervisor's phases (pure: no sockets, no engine)."""

import asyncio

import pytest

from engine.api import SessionClosed
from streaming.bar import protocol as bp
from streaming.jam.protocol import ProtocolError
from streaming.sessions.registry import SessionRegistry
from streaming.sessions.supervisor import TRANSITIONS, Phase, Supervisor
from streaming.sessions.tasks import Tasks
from streaming.webrtc import protocol as wp

START = bp.Start(raw_params={}, loop=b"x", session_id=None, binary_audio=False, seed=None)


def test_a_bar_socket_acts_only_on_what_its_state_allows():
    protocol = bp.SocketProtocol()
    with pytest.raises(ProtocolError, match="No session_id yet"):
        protocol.receive(bp.Update({"bpm": 100}))
    assert protocol.receive(bp.Ping()) == bp.Ping() and protocol.receive(START) is START
    protocol.started("r.abc")
    with pytest.raises(ProtocolError, match="start was already received"):
        protocol.receive(START)
    with pytest.raises(ProtocolError, match="Session not found: this socket plays session r.abc"):
        protocol.receive(bp.Consume("r.other", 3))
    assert protocol.receive(bp.Consume("r.abc", 3)) == bp.Consume("r.abc", 3)
    protocol.session_ended()  # generation failed for good: a new start may come
    assert protocol.state is bp.State.IDLE and protocol.receive(START) is START
    protocol.started("r.def")
    protocol.receive(bp.Stop())
    assert protocol.state is bp.State.STOPPED
    with pytest.raises(ProtocolError):
        protocol.receive(bp.Update({"bpm": 100}))


@pytest.mark.parametrize("state, reported, after", [
    (wp.PeerState.NEW, "connecting", wp.PeerState.NEW),
    (wp.PeerState.NEW, "connected", wp.PeerState.CONNECTED),
    (wp.PeerState.NEW, "failed", wp.PeerState.ENDED),
    (wp.PeerState.CONNECTED, "closed", wp.PeerState.ENDED),
    (wp.PeerState.ENDED, "connected", wp.PeerState.ENDED),  # an end is final
])
def test_a_peer_connection_state_follows_aiortc(state, reported, after):
    assert wp.peer_state(state, reported) is after


@pytest.mark.parametrize("reason, connected, resumed, held", [
    (wp.FAILED, True, False, True),  # the network went: a new offer may resume it
    (wp.FAILED, False, False, False),  # it never played
    (wp.REPLACED, True, False, True),  # a resuming offer takes it over
    ("stopped by the client", True, False, False),
    ("connection closed", True, True, False),  # DTLS close: the client ended it
    ("server shutting down", True, False, False),
    ("not connected within 10 s", False, True, True),  # a resume that has not connected yet keeps it
])
def test_a_peer_keeps_its_session_only_when_it_dropped(reason, connected, resumed, held):
    assert wp.keeps_session(reason, connected, resumed) is held


def test_the_supervisor_moves_only_along_its_transitions():
    assert set(TRANSITIONS) == set(Phase)
    assert Phase.OPENING not in TRANSITIONS[Phase.PLAYING]  # one session at a time per connection

    class Store:
        def get(self, session_id):
            return None

    async def scenario() -> None:
        supervisor = Supervisor(engine=None, blocking=None, registry=SessionRegistry(0.0, Store()), kind="rt",
                                owner=object(), tasks=Tasks())
        with pytest.raises(SessionClosed, match="no session to restart"):
            await supervisor.restart(1)
        assert supervisor.phase is Phase.IDLE and await supervisor.end() is False
        assert await supervisor.hold() is False

    asyncio.run(scenario())
