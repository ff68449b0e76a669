"""Just-in-time pacing: a realtime stream is asked for each chunk when its listener has the measured lead left,
never earlier (a chunk made early holds back every change) and never so late that the listener runs dry."""

import asyncio
import concurrent.futures
import threading
import time
from types import SimpleNamespace

import pytest

from streaming.sessions import lead as lead_rule
from streaming.sessions.lead import Lead
from streaming.sessions.pump import ChunkPump, Pacer
from streaming.sessions.tasks import Tasks

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
