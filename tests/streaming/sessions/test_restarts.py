"""A restart (after a generation failure, or Lyria's RESET_CONTEXT) keeps the session's slot and everything the
client set: real clients (WebSocket, aiortc) against a running server on 127.0.0.1.

Failures are injected by conftest's `marker`: the first decode step of a stream styled with this test's own
word fails once. "The engine is slow" is injected by delaying, for the marker's styles only, the engine calls a
restart might make (opening a session, creating a stream), so that what clients send meanwhile, and a second
client that wants a slot meanwhile, reliably arrive inside the restart window.
"""

import asyncio
import base64
import json
import threading
import time

import pytest
from websockets.sync.client import connect

from engine.runtime.context import Runtime
from engine.runtime.streams import SamplingParams, Stream
from engine.work.session import SessionSettings
from streaming.lyria import protocol as lp
from tests.support.families import melody_file
from tests.support.jam_client import asap_start, is_status, messages_until
from tests.support.servers import running_server
from tests.support.webrtc_client import JamClient, event

DELAY = 1.0  # how long the injected slow engine call takes: the restart window is at least this long


PLAIN = asap_start("dub")


def slow_opening(monkeypatch, engine, word: str) -> None:
    """Opening a session styled with `word` takes DELAY longer (before the engine looks at its slots)."""
    real = engine.open_session

    def open_session(settings, seed, **options):
        if any(word in style for style in settings.styles):
            time.sleep(DELAY)
        return real(settings, seed, **options)

    monkeypatch.setattr(engine, "open_session", open_session)


def streams_of(monkeypatch, engine, word: str, slow_after_first: bool = False) -> list[Stream]:
    """Records every stream the engine creates for `word`'s styles; with `slow_after_first`, creating the
    second and later ones takes DELAY longer (a restart's new stream, however it is made)."""
    real = Runtime.new_stream
    created: list[Stream] = []

    def new_stream(runtime, conditioning, *args, **kwargs):
        mine = any(word in text for text in conditioning.texts)
        if mine and slow_after_first and created:
            time.sleep(DELAY)
        stream = real(runtime, conditioning, *args, **kwargs)
        if mine:
            created.append(stream)
        return stream

    monkeypatch.setattr(Runtime, "new_stream", new_stream)
    return created


class SlotWatch:
    """Samples the engine's open sessions every few milliseconds: the fewest seen is what a thief could take."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.fewest = engine.sessions_open
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.fewest = min(self.fewest, self.engine.sessions_open)
            time.sleep(0.002)

    def __enter__(self) -> "SlotWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def try_to_start(port: int) -> dict:
    """A second client that wants a slot: its first answer to `start`."""
    with connect(f"ws://127.0.0.1:{port}/ws/jam") as ws:
        ws.send(json.dumps(PLAIN))
        return json.loads(ws.recv(timeout=30))


REFUSED = {"type": "error", "error": "concurrency_limit_reached", "limit": 2}


@pytest.fixture
def server(engine):
    """A sidecar of each test's own: a session one test's client left held never takes a slot in the next."""
    with running_server(engine) as running:
        yield running


@pytest.fixture(scope="module")
def melody_server(demo_family):
    from engine.config import EngineConfig
    from engine.core import Engine

    engine = Engine.load(demo_family("melody"), device="cpu",
                         config=EngineConfig(max_sessions=2, weight_format="float32"))
    try:
        with running_server(engine) as running:
            yield running
    finally:
        engine.close()


def melody_message(tmp_path) -> str:
    audio = base64.b64encode(melody_file(tmp_path / "melody.wav").read_bytes()).decode()
    return json.dumps({"type": "melody", "audio_base64": audio})


def test_a_failed_session_restarts_on_its_slot_with_the_changes_made_meanwhile(engine, marker):
    settings = SessionSettings(styles=(f"{marker} dub",), weights=(1.0,), chunk_seconds=0.4)
    session = engine.open_session(settings, seed=1)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            session.next_chunk().result(timeout=30)
        cooler = SessionSettings(styles=settings.styles, weights=(1.0,), chunk_seconds=0.4,
                             params=SamplingParams(temperature=0.5, top_k=9, guidance=3.0))
        assert session.update(cooler).result(timeout=30).chunk == 0  # a failed session goes on by a restart
        assert engine.sessions_open == 1
        session.restart(seed=2)
        assert engine.sessions_open == 1  # the same slot
        assert engine.rows_in_use == cooler.conditioning.rows  # one stream's rows: the new one alone
        chunks = [session.next_chunk().result(timeout=30) for _ in range(2)]
        session.next_chunk()  # in the making while a client resets (Lyria's RESET_CONTEXT): abandoned
        session.restart(seed=3)
        assert engine.rows_in_use == cooler.conditioning.rows  # the live stream it replaced gave its rows back
        chunks.append(session.next_chunk().result(timeout=30))
    finally:
        session.close()
    assert [c.index for c in chunks] == [0, 1, 0]
    assert chunks[0].settings.params.top_k == 9 and chunks[0].audio.isfinite().all()


def test_a_followed_melody_and_the_settings_in_force_survive_a_restart(melody_server, marker, monkeypatch,
                                                                      tmp_path):
    created = streams_of(monkeypatch, melody_server.engine, marker)
    with connect(f"ws://127.0.0.1:{melody_server.port}/ws/jam", max_size=None) as ws:
        ws.send(json.dumps(asap_start("dub")))
        messages_until(ws, lambda m: m["type"] == "chunk")
        ws.send(melody_message(tmp_path))
        following = messages_until(ws, is_status("melody"))[-1]
        assert following["following"] is True
        messages_until(ws, lambda m: m["type"] == "chunk" and
                       m["metadata"]["chunk_index"] >= following["applies_from_chunk"])
        ws.send(json.dumps({"type": "update", "styles": f"dub {marker}", "temperature": 0.7}))
        seen = messages_until(ws, lambda m: m["type"] == "chunk" and m["metadata"]["chunk_index"] == 0)
    assert [m for m in seen if m["type"] == "error"] == []  # the session went on: no error
    told = [m for m in seen if is_status("restarting")(m)]
    assert len(told) == 1 and "injected" in told[0]["error"]
    assert any(is_status("restarted")(m) for m in seen)
    metadata = seen[-1]["metadata"]
    assert metadata["styles"] == f"dub {marker}" and metadata["temperature"] == 0.7
    assert len(created) == 1, "the restart made no fresh stream"  # the marker came by update: no stream before
    assert created[-1].melody is not None, "the restarted stream dropped the melody the client follows"


def test_an_update_and_a_melody_sent_while_restarting_apply_to_the_restarted_stream(melody_server, marker,
                                                                                   monkeypatch, tmp_path):
    created = streams_of(monkeypatch, melody_server.engine, marker, slow_after_first=True)
    with connect(f"ws://127.0.0.1:{melody_server.port}/ws/jam", max_size=None) as ws:
        ws.send(json.dumps(asap_start(f"{marker} dub")))
        messages_until(ws, is_status("restarting"))
        ws.send(json.dumps({"type": "update", "temperature": 0.5, "topk": 9}))  # inside the restart window
        ws.send(melody_message(tmp_path))
        seen = messages_until(ws, is_status("melody"))
        seen += messages_until(ws, lambda m: m["type"] == "chunk" and
                               m["metadata"]["chunk_index"] >= max(0, seen[-1]["applies_from_chunk"]))
    kinds = [m.get("status") or m["type"] for m in seen]
    assert kinds.index("updated") < kinds.index("restarted"), kinds  # the update really came in the window
    updated = seen[kinds.index("updated")]
    assert updated["applies_from_chunk"] == 0  # the restarted stream's first chunk
    chunk = next(m for m in seen if m["type"] == "chunk" and m["metadata"]["chunk_index"] == 0)
    assert chunk["metadata"]["temperature"] == 0.5 and chunk["metadata"]["topk"] == 9
    assert seen[kinds.index("melody")]["following"] is True
    assert created[-1].melody is not None, "the melody sent during the restart was lost"


def test_a_restart_on_a_full_server_keeps_its_slot(engine, server, marker, monkeypatch):
    slow_opening(monkeypatch, engine, marker)
    with connect(f"ws://127.0.0.1:{server.port}/ws/jam") as other, \
            connect(f"ws://127.0.0.1:{server.port}/ws/jam") as failing:
        other.send(json.dumps(PLAIN))
        messages_until(other, lambda m: m["type"] == "chunk")
        failing.send(json.dumps(asap_start(f"{marker} dub")))
        messages_until(failing, is_status("restarting"))  # the server is full: 2 of 2 slots
        with SlotWatch(engine) as watch:
            thief = try_to_start(server.port)  # wants a slot while the failing session restarts
            seen = messages_until(failing, lambda m: m["type"] == "chunk")
    assert thief == REFUSED
    assert any(is_status("restarted")(m) for m in seen), seen
    assert seen[-1]["metadata"]["chunk_index"] == 0
    assert watch.fewest == 2, "the restart gave its slot back"


def test_lyria_reset_context_on_a_full_server_keeps_its_slot(engine, server, word, monkeypatch):
    slow_opening(monkeypatch, engine, word)
    created = streams_of(monkeypatch, engine, word)

    def audio(ws) -> dict:
        while True:
            message = json.loads(ws.recv(timeout=60))
            if "serverContent" in message:
                return message

    with connect(f"ws://127.0.0.1:{server.port}/ws/jam") as other, \
            connect(f"ws://127.0.0.1:{server.port}{lp.PATH}", max_size=None) as lyria:
        lyria.send(json.dumps({"setup": {"model": "models/lyria-realtime-exp"}}))
        assert set(json.loads(lyria.recv(timeout=10))["setupComplete"]) == {"sessionId"}
        lyria.send(json.dumps({"clientContent": {"weightedPrompts": [{"text": f"{word} techno", "weight": 1}]}}))
        lyria.send(json.dumps({"musicGenerationConfig": {"seed": 5}}))
        lyria.send(json.dumps({"playbackControl": "PLAY"}))
        audio(lyria)
        other.send(json.dumps(PLAIN))
        messages_until(other, lambda m: m["type"] == "chunk")
        with SlotWatch(engine) as watch:
            lyria.send(json.dumps({"playbackControl": "RESET_CONTEXT"}))
            time.sleep(0.1)
            thief = try_to_start(server.port)
            after = audio(lyria)
    assert thief == REFUSED
    assert after["serverContent"]["audioChunks"][0]["mimeType"] == lp.MIME_TYPE
    assert len(created) >= 2, "RESET_CONTEXT made no fresh stream"
    assert watch.fewest == 2, "RESET_CONTEXT gave its slot back"


def test_a_webrtc_restart_on_a_full_server_keeps_its_slot(engine, server, marker, monkeypatch, loopback):
    slow_opening(monkeypatch, engine, marker)
    created = streams_of(monkeypatch, engine, marker)

    async def scenario():
        client = JamClient(f"http://127.0.0.1:{server.port}")
        track = await client.connect({"styles": "dub", "max_decode_frames": 10})
        await client.message(event("chunk"))
        other = await asyncio.to_thread(connect, f"ws://127.0.0.1:{server.port}/ws/jam")
        try:
            other.send(json.dumps(PLAIN))
            await asyncio.to_thread(messages_until, other, lambda m: m["type"] == "chunk")
            with SlotWatch(engine) as watch:
                client.send({"type": "update", "styles": f"dub {marker}"})  # its first step fails once
                failure = await client.message(lambda m: m["type"] == "error")
                thief = await asyncio.to_thread(try_to_start, server.port)
                chunk = await client.message(lambda m: event("chunk")(m) or m["type"] == "error")
                frames = [await asyncio.wait_for(track.recv(), 5) for _ in range(10)]
        finally:
            other.close()
            await client.close()
        return failure, thief, chunk, frames, watch.fewest

    failure, thief, chunk, frames, fewest = asyncio.run(scenario())
    assert "restarting with a fresh context" in failure["data"]
    assert thief == REFUSED
    assert chunk["type"] == "log" and chunk["data"]["index"] == 0 and marker in chunk["data"]["styles"], chunk
    assert len(frames) == 10 and len(created) == 1  # the marker came by update: the restart made this one
    assert fewest == 2, "the WebRTC restart gave its slot back"
