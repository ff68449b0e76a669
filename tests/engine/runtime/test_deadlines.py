"""Deadline-aware work (engine.runtime.deadlines, engine.runtime.worker): batch pieces run only in the slack
realtime streams leave, held work always advances, due work goes first in due order, and every future resolves
whatever the interleaving of deadlines and batch pieces."""

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.runtime import deadlines as rule
from engine.runtime.deadlines import CODEC, LM, Deadlines
from engine.runtime.worker import BACKGROUND, NORMAL, URGENT, Worker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_without_a_realtime_stream_batch_work_runs_as_it_comes():
    deadlines = Deadlines(Clock())
    deadlines.observe(CODEC, "mbd diffusion", 5.0)
    assert deadlines.slack() == float("inf") and deadlines.admits(CODEC, "mbd diffusion")


def test_a_piece_starts_only_where_it_fits_every_realtime_stream_s_slack():
    clock = Clock()
    deadlines = Deadlines(clock)
    deadlines.observe_step(0.01)
    deadlines.observe(CODEC, "piece", 0.2)
    # A: due in 1 s, 30 steps left (0.3 s), its decode 0.1 s; B: due in 0.8 s, its decode 0.15 s, frames made
    deadlines.expect("a", clock.now + 1.0, lambda: 30, 0.1, asked=True)
    deadlines.expect("b", clock.now + 0.8, lambda: 0, 0.15, asked=True)
    # A's chunk waits for B's decode (due first) on the codec thread: 1.0 - 0.3 - (0.1 + 0.15) - margin
    assert deadlines.slack() == pytest.approx(1.0 - 0.3 - 0.25 - rule.MARGIN_SECONDS)
    assert deadlines.admits(CODEC, "piece") and deadlines.admits(LM, "unknown kind")  # 0.2 and the prior fit
    clock.now += 0.3  # now 0.15 s of slack: the piece no longer fits, a cheaper kind still does
    assert not deadlines.admits(CODEC, "piece")
    deadlines.observe(CODEC, "cheap", 0.05)
    assert deadlines.admits(CODEC, "cheap")
    deadlines.forget("a")
    assert deadlines.slack() == pytest.approx(0.5 - 0.15 - rule.MARGIN_SECONDS) and deadlines.admits(CODEC, "piece")


def test_an_expected_chunk_not_asked_for_by_its_due_time_stops_counting():
    clock = Clock()
    deadlines = Deadlines(clock)
    deadlines.expect("listener", clock.now + 0.5, lambda: 10, 0.05, asked=False)  # the next chunk, expected
    assert deadlines.slack() == pytest.approx(0.5 - 0.05 - rule.MARGIN_SECONDS)  # no live step measured yet
    clock.now += 0.6  # never asked for: the listener stopped asking (a pause, a dropped connection)
    assert deadlines.slack() == float("inf")
    deadlines.expect("late", clock.now - 0.1, lambda: 10, 0.05, asked=True)  # asked, late: it counts until made
    clock.now += 5.0
    assert deadlines.slack() < 0


def test_held_batch_work_runs_one_piece_once_the_hold_limit_passed():
    clock = Clock()
    deadlines = Deadlines(clock)
    deadlines.expect("late", clock.now - 1.0, lambda: 0, 0.05, asked=True)  # no slack at all
    assert not deadlines.admits(CODEC, "piece")
    clock.now += rule.HOLD_LIMIT_SECONDS - 0.01
    assert not deadlines.admits(CODEC, "piece") and not deadlines.admits(CODEC, "other")
    clock.now += 0.01
    assert deadlines.admits(CODEC, "piece")
    assert deadlines.admits(CODEC, "piece") and not deadlines.admits(LM, "piece")  # granted until it ran, here
    deadlines.observe(CODEC, "piece", 0.05)
    assert not deadlines.admits(CODEC, "piece")  # the count starts again


def test_a_kind_costs_its_longest_recent_piece():
    deadlines = Deadlines(Clock())
    assert deadlines.cost(CODEC, "new") == rule.PRIOR_SECONDS
    deadlines.observe(CODEC, "new", 0.4)
    for _ in range(rule.COST_SAMPLES - 1):
        deadlines.observe(CODEC, "new", 0.01)
    assert deadlines.cost(CODEC, "new") == 0.4 and deadlines.cost(LM, "new") == rule.PRIOR_SECONDS
    deadlines.observe(CODEC, "new", 0.02)  # the slow one has left the window
    assert deadlines.cost(CODEC, "new") == 0.02


def test_admitted_work_bounds_a_chunk_s_wait_until_it_is_released():
    deadlines = Deadlines(Clock())
    assert deadlines.wait_bound() == 0.0
    deadlines.observe(CODEC, "mbd diffusion", 0.3)
    deadlines.observe(CODEC, "mbd equaliser", 0.02)
    deadlines.observe(LM, "prediction step", 0.01)
    mbd = deadlines.admit([(CODEC, "mbd diffusion"), (CODEC, "mbd equaliser"), (LM, "prediction step")])
    text = deadlines.admit([(LM, "prediction step"), (LM, "prediction prefill")])  # the prefill's cost: the prior
    assert deadlines.wait_bound() == pytest.approx(0.3 + rule.PRIOR_SECONDS)  # the longest piece per worker
    mbd()
    mbd()  # a second release changes nothing
    assert deadlines.wait_bound() == pytest.approx(rule.PRIOR_SECONDS)
    text()
    assert deadlines.wait_bound() == 0.0


def test_held_batch_work_waits_without_blocking_other_jobs_and_runs_once_the_deadline_moves():
    clock = Clock()
    deadlines = Deadlines(clock)
    worker = Worker("codec", deadlines=deadlines)
    try:
        deadlines.expect("listener", clock.now + 0.01, lambda: 0, 0.05, asked=True)  # no slack
        batch = worker.call(lambda: "batch", BACKGROUND, label="piece")
        control = worker.call(lambda: "control", NORMAL)
        assert control.result(timeout=10) == "control"
        time.sleep(0.3)
        assert not batch.done()  # held: the frozen clock never reaches the hold limit
        deadlines.expect("listener", clock.now + 5.0, lambda: 0, 0.05, asked=False)  # its chunk made: the next one
        assert batch.result(timeout=10) == "batch"
        deadlines.expect("listener", clock.now + 0.01, lambda: 0, 0.05, asked=True)
        again = worker.call(lambda: "again", BACKGROUND, label="piece")
        time.sleep(0.1)
        clock.now += rule.HOLD_LIMIT_SECONDS  # held that long: one piece runs anyway
        assert again.result(timeout=10) == "again"
    finally:
        worker.close()


# -- any interleaving ---------------------------------------------------------------------------------------------
BATCH_SECONDS = 0.004  # each batch piece: the bounded piece a due job may wait behind

operation = st.one_of(
    st.tuples(st.just("batch"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("due"), st.integers(-50, 500)),  # an URGENT job due this many ms from now
    st.tuples(st.just("normal"), st.just(0)),
    st.tuples(st.just("stream"), st.integers(-50, 300)),  # a realtime stream's chunk due in this many ms
    st.tuples(st.just("forget"), st.just(0)),  # the latest stream goes
    st.tuples(st.just("pause"), st.integers(0, 8)),  # ms before the next operation
)
# segments of operations, each queued as it comes or while a job holds the worker (then all wait together)
segments = st.lists(st.tuples(st.booleans(), st.lists(operation, min_size=1, max_size=8)), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segments)
def test_every_future_resolves_and_due_work_goes_first_in_due_order(monkeypatch, script):
    """Whatever the interleaving: every future resolves; a due job never waits behind more than the one piece the
    worker had taken when it was queued; due jobs queued together run earliest due first, before the rest."""
    monkeypatch.setattr(rule, "HOLD_LIMIT_SECONDS", 0.05)  # held work advances within the example
    deadlines = Deadlines()
    worker = Worker("codec", deadlines=deadlines)
    log: list[tuple[str, int]] = []  # (kind, id) in the order they started
    lock = threading.Lock()

    def job(kind: str, ident: int, seconds: float = 0.0):
        def run() -> int:
            with lock:
                log.append((kind, ident))
            if seconds:
                time.sleep(seconds)
            return ident
        return run

    futures, submitted, dues, streams, together = [], {}, {}, [], []
    ident = 0
    try:
        for blocked, ops in script:
            release, started = threading.Event(), threading.Event()
            if blocked:  # a job holds the worker while the segment is queued
                futures.append(worker.call(lambda s=started, r=release: s.set() or r.wait(10), NORMAL))
                assert started.wait(10)
                together.append([])
            for op, value in ops:
                ident += 1
                if op == "batch":
                    futures.append(worker.call(job("batch", ident, BATCH_SECONDS), BACKGROUND, label=value))
                elif op == "due":
                    dues[ident] = time.monotonic() + value / 1000
                    futures.append(worker.call(job("due", ident), URGENT, due=dues[ident]))
                    submitted[ident] = len(log)  # what had started when it was queued
                elif op == "normal":
                    futures.append(worker.call(job("normal", ident), NORMAL))
                elif op == "stream":
                    streams.append(ident)
                    deadlines.expect(ident, time.monotonic() + value / 1000, lambda: 0, 0.01, asked=True)
                elif op == "forget" and streams:
                    deadlines.forget(streams.pop())
                elif op == "pause" and not blocked:
                    time.sleep(value / 1000)
                if blocked and op in ("batch", "due", "normal"):
                    together[-1].append(("due" if op == "due" else op, ident))
            release.set()
        for stream in streams:
            deadlines.forget(stream)
        for future in futures:
            future.result(timeout=30)  # every one resolves
    finally:
        worker.close()
    for due, before in submitted.items():
        # what started after it was queued and before it: at most the one piece the worker had already taken
        overtaking = [kind for kind, _ in log[before:log.index(("due", due))] if kind != "due"]
        assert len(overtaking) <= 1, (due, log)
    for queued in together:  # queued while the worker was held: they ran as the order says
        ran = sorted(queued, key=log.index)
        due_jobs = [job for job in ran if job[0] == "due"]
        assert due_jobs == sorted(due_jobs, key=lambda job: (dues[job[1]], job[1])), (queued, log)
        assert ran[:len(due_jobs)] == due_jobs, (queued, log)
