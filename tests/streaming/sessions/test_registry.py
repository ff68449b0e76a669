"""Sessions that survive a dropped connection (streaming.sessions.registry), with real WebSocket clients on
127.0.0.1."""

import json
import socket
import time

import numpy as np
import pytest
from websockets.sync.client import connect

from tests.support.helpers import wait_until
from tests.support.jam_client import START, decode_chunk, next_of, receive_json, run_seed_client
from tests.support.servers import sessions, start_server, ws_url

RESUME_SECONDS = 3.0


@pytest.fixture(scope="module")
def server_config() -> dict:
    return {"resume_seconds": RESUME_SECONDS}


def drop(ws) -> None:
    """The network goes away: no closing handshake (what a killed client or a closed laptop lid looks like)."""
    ws.socket.shutdown(socket.SHUT_RDWR)
    ws.socket.close()


def start(ws, seed: int, pace: str = "asap") -> dict:
    ws.send(json.dumps({**START, "params": {**START["params"], "seed": seed, "pace": pace}}))
    started = receive_json(ws)
    assert started["type"] == "started", started
    return started


def chunks_by_index(ws, count: int) -> dict[int, np.ndarray]:
    received = {}
    while len(received) < count:
        chunk = next_of(ws, "chunk")
        received[chunk["metadata"]["chunk_index"]] = decode_chunk(chunk)[0]
    return received


def test_a_dropped_session_resumes_where_its_client_stopped_listening(server, engine):
    """Chunks 0-2 read on one socket, which then stops reading while the realtime pace sends the next chunk (and
    takes the one after in the making), and drops; chunks 3-6 on a new socket: the indexes go on, nothing is lost
    or repeated, and the audio is that of an uninterrupted session of the same seed (seams included: each chunk's
    overlap is the start of the next, so equal chunks make equal seams)."""
    with connect(ws_url(server)) as ws:
        start(ws, seed=7)
        reference = chunks_by_index(ws, 7)
        ws.send(json.dumps({"type": "stop"}))
    assert wait_until(lambda: sessions(server) == 0, 5)

    first = connect(ws_url(server))
    session_id = start(first, seed=7, pace="realtime")["session_id"]
    before = chunks_by_index(first, 3)
    time.sleep(1.2)  # chunk 3 (0.8 s) goes out to a client that no longer reads: only the replay has it
    drop(first)
    assert wait_until(lambda: server.registry.held == 1, 5), "the session was not held"
    assert sessions(server) == 1  # its slot stays taken while held
    with connect(ws_url(server)) as second:
        second.send(json.dumps({"type": "start", "session_id": session_id, "from_chunk": 3}))
        resumed = receive_json(second)
        assert resumed == {"type": "started", "mode": "rt", "session_id": session_id, "resumed": True,
                           "from_chunk": 3}
        status = receive_json(second)
        assert status["status"] == "resumed" and status["from_chunk"] == 3
        after = chunks_by_index(second, 4)
        assert sorted(after) == [3, 4, 5, 6], "a chunk was lost or repeated"
        second.send(json.dumps({"type": "update", "temperature": 0.9}))  # the held parameters go on
        assert next_of(second, "status")["status"] == "updated"
        second.send(json.dumps({"type": "stop"}))
        assert next_of(second, "stopped")["type"] == "stopped"
    assert wait_until(lambda: sessions(server) == 0 and engine.rows_in_use == 0, 5)
    for index, audio in {**before, **after}.items():
        np.testing.assert_allclose(audio, reference[index], atol=1e-4, err_msg=f"chunk {index}")


def test_without_from_chunk_the_first_chunk_not_sent_comes_next(server):
    first = connect(ws_url(server))
    session_id = start(first, seed=3)["session_id"]
    got = chunks_by_index(first, 2)
    drop(first)
    assert wait_until(lambda: server.registry.held == 1, 5)
    with connect(ws_url(server)) as second:
        second.send(json.dumps({"type": "start", "session_id": session_id}))
        resumed = receive_json(second)
        assert resumed["resumed"] is True and resumed["from_chunk"] >= max(got) + 1
        assert next_of(second, "chunk")["metadata"]["chunk_index"] == resumed["from_chunk"]
        second.send(json.dumps({"type": "stop"}))


def test_wrong_busy_and_expired_ids_are_refused_with_the_reason(server, engine):
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"type": "start", "session_id": "no-such-session"}))
        error = receive_json(ws)
        assert error["type"] == "error" and "no session no-such-session" in error["error"]
        playing = connect(ws_url(server))
        session_id = start(playing, seed=5)["session_id"]
        ws.send(json.dumps({"type": "start", "session_id": session_id}))
        error = receive_json(ws)
        assert error["type"] == "error" and "another connection" in error["error"]
        drop(playing)
        assert wait_until(lambda: server.registry.held == 1, 5)
        ws.send(json.dumps({"type": "start", "session_id": session_id, "from_chunk": 10_000}))
        error = receive_json(ws)
        assert error["type"] == "error" and "ahead of the session" in error["error"]
        # held sessions end after the resume window: the slot and the rows come back
        assert wait_until(lambda: sessions(server) == 0 and engine.rows_in_use == 0, RESUME_SECONDS + 3)
        ws.send(json.dumps({"type": "start", "session_id": session_id}))
        error = receive_json(ws)
        assert error["type"] == "error" and "has ended" in error["error"]


def test_a_normal_close_ends_the_session_at_once(server):
    """Closing with 1000 (its purpose fulfilled) is not a drop: nothing is held."""
    with connect(ws_url(server)) as ws:
        start(ws, seed=1)
        next_of(ws, "chunk")
    assert wait_until(lambda: sessions(server) == 0, 1.0, interval=0.05)
    assert server.registry.held == 0


def test_the_killed_seed_client_is_held_for_the_window_then_freed(server, tmp_path):
    """The seed's own Python client, killed mid-jam: its session waits for a resume, then its slot is freed."""
    assert len(run_seed_client(ws_url(server), tmp_path, chunks=1)) == 1  # killed after its first chunk
    assert wait_until(lambda: server.registry.held == 1, 5)
    killed = time.monotonic()
    assert sessions(server) == 1
    assert wait_until(lambda: sessions(server) == 0, RESUME_SECONDS + 3)
    assert time.monotonic() - killed >= RESUME_SECONDS - 1.0


def test_resume_off_frees_a_vanished_clients_session_within_a_second(engine):
    running = start_server(engine, resume_seconds=0)
    try:
        ws = connect(ws_url(running))
        start(ws, seed=2)
        next_of(ws, "chunk")
        drop(ws)
        gone = time.monotonic()
        assert wait_until(lambda: sessions(running) == 0, 1.0, interval=0.05), "session still held"
        assert wait_until(lambda: engine.rows_in_use == 0, 1.5 - (time.monotonic() - gone))
    finally:
        running.stop()
