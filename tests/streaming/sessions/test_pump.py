"""Just-in-time pacing: a realtime stream is asked for each chunk when its listener has the measured lead left,
never earlier (a chunk made early holds back every change) and never so late that the listener runs dry."""

import asyncio
import concurrent.futures
import json
import threading
import time
from types import SimpleNamespace

import pytest

from streaming.sessions import lead as lead_rule
from streaming.sessions.lead import Lead
from streaming.sessions.pump import ChunkPump, Pacer
from streaming.sessions.tasks import Tasks
from tests.support.helpers import wait_until

CHUNK_SECONDS = 0.3
GENERATION_SECONDS = 0.06


class TimedSession:
    """Each chunk is ready GENERATION_SECONDS after it is asked for; the request times are kept."""

    def __init__(self) -> None:
        self.requests: list[float] = []

    def next_chunk(self, deadline=None) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        index = len(self.requests)
        self.requests.append(time.monotonic())
        chunk = SimpleNamespace(index=index, seconds=CHUNK_SECONDS, start_seconds=index * CHUNK_SECONDS)
        timer = threading.Timer(GENERATION_SECONDS, future.set_result, (chunk,))
        timer.daemon = True
        timer.start()
        return future


def test_the_lead_is_the_recent_high_percentile_plus_a_margin_with_a_floor():
    lead = Lead()
    assert lead.seconds == lead_rule.FLOOR_SECONDS  # nothing measured yet
    for _ in range(19):
        lead.record(0.01)
    assert lead.seconds == lead_rule.FLOOR_SECONDS
    lead.record(0.4)  # one slow chunk counts in full
    assert lead.seconds == pytest.approx(1.25 * 0.4 + 0.1)
    for _ in range(lead_rule.WINDOW):
        lead.record(0.2)
    assert lead.seconds == pytest.approx(1.25 * 0.2 + 0.1)  # the slow one has left the window


def test_admitted_batch_work_raises_the_lead_before_any_chunk_is_slower():
    """The engine's expected wait (LiveSession.expected_wait: what a chunk may wait behind the batch work it just
    admitted) raises the lead at once, on top of the typical chunk, and it falls back when the work ends."""
    wait = [0.0]
    lead = Lead(expected_wait=lambda: wait[0])
    for _ in range(10):
        lead.record(0.1)
    assert lead.seconds == pytest.approx(1.25 * 0.1 + 0.1)
    wait[0] = 0.4  # heavy work admitted: no chunk was slower yet
    assert lead.seconds == pytest.approx(1.25 * (0.1 + 0.4) + 0.1)
    wait[0] = 0.0
    assert lead.seconds == pytest.approx(1.25 * 0.1 + 0.1)
    session = TimedSession()
    session.expected_wait = lambda: 0.3
    pump = ChunkPump(session)
    pump.lead.record(0.1)
    assert pump.lead.seconds == pytest.approx(1.25 * (0.1 + 0.3) + 0.1)  # the pump's lead asks the session


def test_a_realtime_stream_is_asked_for_each_chunk_just_in_time_and_never_runs_dry():
    async def scenario():
        session, pacer, sent = TimedSession(), Pacer("realtime"), []

        async def send_chunk(chunk) -> None:
            sent.append((chunk.index, time.monotonic()))

        async def on_error(exc: Exception) -> None:
            raise AssertionError(exc)

        tasks = Tasks()
        pump = ChunkPump(session, pacer, send_chunk, on_error, tasks)
        pump.start()
        while len(sent) < 8:
            await asyncio.sleep(0.02)
        await pump.stop()
        await tasks.close()
        return session, pacer, sent

    session, pacer, sent = asyncio.run(scenario())
    started = sent[0][1]
    assert pacer.underruns == 0
    for index in range(2, 8):  # chunk `index` is needed when the listener has played `index` chunks
        needed = started + index * CHUNK_SECONDS
        ahead = needed - session.requests[index]
        assert ahead == pytest.approx(pacer.lead.seconds, abs=0.05), (index, ahead)  # not a chunk earlier
        assert sent[index][1] < needed
    assert len(session.requests) <= 9  # nothing generated beyond the chunk in the making


def test_asap_asks_for_the_next_chunk_while_the_current_one_is_sent():
    async def scenario():
        session, sent = TimedSession(), []

        async def send_chunk(chunk) -> None:
            sent.append(chunk.index)

        async def on_error(exc: Exception) -> None:
            raise AssertionError(exc)

        tasks = Tasks()
        pump = ChunkPump(session, Pacer("asap"), send_chunk, on_error, tasks)
        began = time.monotonic()
        pump.start()
        while len(sent) < 5:
            await asyncio.sleep(0.01)
        await pump.stop()
        await tasks.close()
        return time.monotonic() - began

    assert asyncio.run(scenario()) < 5 * CHUNK_SECONDS  # far faster than real time


@pytest.mark.slow
def test_realtime_listeners_stay_on_schedule_beside_a_melody_prediction(demo_family, tmp_path):
    """Two /ws/jam listeners in pace realtime (2 s and 0.48 s chunks), played as the seed's browser client schedules
    them, while a 60 s melody prediction runs on the same engine (a chroma per window: the stem separator runs on
    the codec thread that decodes their chunks): every chunk comes before its slot begins, so the listener never
    runs out of audio (without deadline-aware work, 2 s chunks came up to 0.26 s after their slot on this project's
    2-core machines; with it, 0.18 s or more before the client's mark)."""
    from websockets.sync.client import connect

    from engine.config import EngineConfig
    from engine.core import Engine
    from engine.work.batch import BatchRequest
    from tests.support.families import melody_file
    from tests.support.seed_browser import SLACK, BrowserSchedule
    from tests.support.servers import running_server, ws_url

    engine = Engine.load(demo_family("melody"), device="cpu", config=EngineConfig(max_sessions=2))
    stop = threading.Event()
    heard: dict[int, list[tuple[float, float]]] = {50: [], 12: []}  # frames -> (arrival, how early) per chunk

    def listen(url: str, frames: int) -> None:
        schedule = BrowserSchedule()
        with connect(url, max_size=None) as ws:
            ws.send(json.dumps({"type": "start", "params": {"styles": f"organ {frames}", "pace": "realtime",
                                                            "max_decode_frames": frames}}))
            while not stop.is_set():
                message = json.loads(ws.recv(timeout=60))
                if message["type"] == "chunk":
                    now = time.monotonic()
                    schedule.arrive(now, message["metadata"]["total_seconds"])
                    if schedule.early:
                        heard[frames].append((now, schedule.early[-1]))
            ws.send(json.dumps({"type": "stop"}))

    try:
        with running_server(engine) as server:
            listeners = [threading.Thread(target=listen, args=(ws_url(server), frames)) for frames in heard]
            for listener in listeners:
                listener.start()
            assert wait_until(lambda: all(len(chunks) >= 3 for chunks in heard.values()), timeout=60)
            started = time.monotonic()
            melody = melody_file(tmp_path / "melody.wav", seconds=20.0)
            result = engine.generate(BatchRequest(prompt="organ", duration=60, seed=2, input_audio=melody)).wait()
            ended = time.monotonic()
            stop.set()
            for listener in listeners:
                listener.join(timeout=60)
        assert result.wav.shape[-1] == 60 * 32000
        for frames, chunks in heard.items():
            during = [early for arrival, early in chunks if started <= arrival <= ended]
            assert len(during) >= (ended - started) / (frames / 25) / 2, (frames, len(during))
            # each came before its slot began (generous: the client's own mark is SLACK earlier)
            assert min(during) > -SLACK, (frames, sorted(during)[:5])
    finally:
        engine.close()


def test_the_listeners_place_on_the_timeline_follows_the_clock_up_to_what_it_was_sent(monkeypatch):
    """Pacer.playing_at: where a listener playing without gaps is now on the stream's timeline (a player's live
    input is placed there), never past the end of what it was sent."""
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    pacer = Pacer("realtime")
    assert pacer.playing_at() is None
    for index in range(2):  # a resumed stream: its first chunk here starts 6 s into the timeline
        pacer.sent(SimpleNamespace(index=20 + index, seconds=0.3, start_seconds=6.0 + 0.3 * index))
    assert pacer.playing_at() == pytest.approx(6.0)
    now[0] += 0.45
    assert pacer.playing_at() == pytest.approx(6.45)
    now[0] += 5.0
    assert pacer.playing_at() == pytest.approx(6.6), "ran dry: it is at the end of what it was sent"
