"""The job table (streaming.jobs.table) over the real demo engine: progress, queue positions and estimates, errors,
cancellation that frees the engine, and every bound (count, bytes, time) with a clock the test moves."""

import threading
import time

import pytest

from engine.work.batch import BatchRequest
from streaming.jobs.table import (
    CANCELLED,
    COMPLETED,
    DELIVERED_KEEP_SECONDS,
    FAILED,
    QUEUED,
    REAP_INTERVAL_SECONDS,
    RUNNING,
    WAITING_FOR_SLOT,
    InputTooLarge,
    JobCancelled,
    JobFailed,
    JobTable,
    TableFull,
)
from tests.support.helpers import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def table(engine, clock):
    jobs = JobTable(engine, clock=clock)
    yield jobs
    jobs.close()


def held(release: threading.Event, value="done"):
    """Work that runs until `release` is set (or its job is cancelled)."""
    def work(ctx):
        while not release.wait(0.02):
            ctx.check()
        return value
    return work


def rows_free(engine) -> bool:
    return engine.rows_in_use == 0


def test_a_generation_reports_rising_progress_then_its_result(table, engine):
    seen = []

    def work(ctx):
        result = ctx.generate(BatchRequest(prompt="techno", duration=4, seed=3), span=(0.0, 0.9))
        ctx.stage("encoding", 0.95)
        return {"seconds": result.audio_seconds, "seed": result.seed}

    job_id = table.submit(work, work_seconds=4)
    future = table.future(job_id)
    while not future.done():
        status = table.status(job_id)
        seen.append(status.progress)
        threading.Event().wait(0.05)
    assert future.result() == {"seconds": 4.0, "seed": 3}
    status = table.status(job_id)
    assert status.state == COMPLETED and status.progress == 1.0 and status.result["seed"] == 3
    assert status.estimated_seconds is None and status.position is None
    assert seen == sorted(seen) and any(0 < p < 0.9 for p in seen)


def test_jobs_queue_in_order_with_positions_and_measured_estimates(table):
    release = threading.Event()
    first = table.submit(held(release), work_seconds=10)
    assert wait_until(lambda: table.status(first).state == RUNNING, 5, 0.02)
    second = table.submit(held(release), work_seconds=10)
    third = table.submit(held(release), work_seconds=20)
    s2, s3 = table.status(second), table.status(third)
    assert (s2.state, s2.position, s3.position) == (QUEUED, 0, 1)
    # before any measurement: 1 s per work second (default); third waits for 10 + 10 and runs 20
    assert s2.estimated_seconds == pytest.approx(20, abs=1) and s3.estimated_seconds == pytest.approx(40, abs=1)
    assert table.cancel(second)
    assert table.status(second).state == CANCELLED and table.status(third).position == 0
    with pytest.raises(JobCancelled):
        table.future(second).result(timeout=1)
    release.set()
    assert table.future(third).result(timeout=5) == "done"


def test_the_estimate_follows_measured_throughput(table, clock):
    release = threading.Event()
    first = table.submit(held(release), work_seconds=10)
    assert wait_until(lambda: table.status(first).state == RUNNING, 5, 0.02)
    clock.now += 5.0  # 10 work seconds took 5 wall seconds: 0.5 s per work second
    release.set()
    table.future(first).result(timeout=5)
    blocker = threading.Event()
    running = table.submit(held(blocker), work_seconds=10)
    assert wait_until(lambda: table.status(running).state == RUNNING, 5, 0.02)
    queued = table.submit(held(blocker), work_seconds=10)
    assert table.status(queued).estimated_seconds == pytest.approx(10.0)
    blocker.set()


def test_errors_name_the_field_and_the_worker_goes_on(table):
    bad = table.submit(lambda ctx: ctx.generate(BatchRequest(prompt="x", duration=0)), work_seconds=1)
    with pytest.raises(ValueError):
        table.future(bad).result(timeout=10)
    status = table.status(bad)
    assert status.state == FAILED and "duration" in status.error
    good = table.submit(lambda ctx: 42, work_seconds=1)
    assert table.future(good).result(timeout=10) == 42


def test_cancelling_a_running_generation_frees_the_engine(table, engine):
    owner_jobs = [table.submit(lambda ctx: ctx.generate(BatchRequest(prompt="drone", duration=200, seed=1)),
                               work_seconds=200, owner="sid-1") for _ in range(2)]
    assert wait_until(lambda: table.status(owner_jobs[0]).progress > 0, 30, 0.05)
    assert engine.rows_in_use > 0
    assert table.cancel_owner("sid-1") == 2
    for job_id in owner_jobs:
        with pytest.raises(JobCancelled):  # at once, not when the 200 s would have been generated
            table.future(job_id).result(timeout=3)
        assert table.status(job_id).state == CANCELLED
    assert wait_until(lambda: rows_free(engine), 3, 0.05)


def test_count_bounds_refuse_then_make_room_from_finished_entries(engine, clock):
    table = JobTable(engine, max_entries=3, max_pending=2, clock=clock)
    try:
        release = threading.Event()
        a, b = table.submit(held(release), work_seconds=1), table.submit(held(release), work_seconds=1)
        with pytest.raises(TableFull, match="2 jobs are queued or running"):
            table.submit(held(release), work_seconds=1)
        release.set()
        table.future(a).result(timeout=5), table.future(b).result(timeout=5)
        c, d = table.submit(lambda ctx: 1, work_seconds=1), table.submit(lambda ctx: 2, work_seconds=1)
        table.future(d).result(timeout=5)
        assert table.status(a) is None  # the oldest finished entry made room
        assert {table.status(x).state for x in (b, c, d)} == {COMPLETED}
    finally:
        table.close()


def test_byte_bounds_cover_inputs_and_results(engine, clock):
    table = JobTable(engine, max_bytes=1000, clock=clock)
    try:
        with pytest.raises(InputTooLarge, match="JAM_JOB_BYTES"):  # alone over the bound: no wait helps
            table.submit(lambda ctx: b"", work_seconds=1, input_bytes=1001)
        running = threading.Event()
        holding = table.submit(held(running), work_seconds=1, input_bytes=600)
        with pytest.raises(TableFull, match="MiB"):  # over the bound beside a running job: try again later
            table.submit(lambda ctx: b"", work_seconds=1, input_bytes=600)
        running.set()
        table.future(holding).result(timeout=5)
        big = table.submit(lambda ctx: b"x" * 2000, work_seconds=1)
        with pytest.raises(JobFailed):  # a result too big to hold fails its job instead of being kept
            table.future(big).result(timeout=5)
        assert table.status(big).state == FAILED and "does not fit" in table.status(big).error
        kept = table.submit(lambda ctx: b"x" * 600, work_seconds=1)
        table.future(kept).result(timeout=5)
        newer = table.submit(lambda ctx: b"y" * 600, work_seconds=1)
        table.future(newer).result(timeout=5)
        assert table.status(kept) is None and table.status(newer).result == b"y" * 600
        assert table.counts()["bytes"] == 600
    finally:
        table.close()


def test_finished_entries_are_reaped_and_stuck_jobs_time_out_without_any_client(engine, clock):
    table = JobTable(engine, keep_seconds=60, max_job_seconds=120, clock=clock)
    try:
        done = table.submit(lambda ctx: "r", work_seconds=1)
        table.future(done).result(timeout=5)
        stuck = table.submit(lambda ctx: ctx.generate(BatchRequest(prompt="drone", duration=120, seed=2)),
                             work_seconds=120)
        assert wait_until(lambda: table.status(stuck).progress > 0, 30, 0.05)
        clock.now += 61
        assert wait_until(lambda: table.status(done) is None, 5, 0.05)  # the reaper, no call needed
        clock.now += 60
        with pytest.raises(JobCancelled, match="timed out"):
            table.future(stuck).result(timeout=10)
        assert wait_until(lambda: rows_free(engine), 10, 0.05)
        clock.now += 61
        assert wait_until(lambda: table.counts()["entries"] == 0, 5, 0.05)
    finally:
        table.close()


def test_a_delivered_result_is_kept_only_briefly(engine, clock):
    """A result a poll has carried is held DELIVERED_KEEP_SECONDS, not keep_seconds: a stream of jobs whose clients
    took their results holds no memory for long."""
    table = JobTable(engine, keep_seconds=600, pickup_seconds=10, clock=clock)
    try:
        taken, waiting = (table.submit(lambda ctx: b"x" * 1000, work_seconds=1) for _ in range(2))
        for job in (taken, waiting):
            table.future(job).result(timeout=5)
        assert table.outstanding() == 2  # just finished: a drain waits for their clients' next polls
        table.delivered(taken)
        table.delivered("no such job")
        assert table.outstanding() == 1
        clock.now += DELIVERED_KEEP_SECONDS - 1
        time.sleep(2 * REAP_INTERVAL_SECONDS)
        assert table.status(taken).state == COMPLETED  # a lost answer may still be asked again
        clock.now += 2
        assert wait_until(lambda: table.status(taken) is None, 5, 0.05)
        assert table.status(waiting).state == COMPLETED and table.counts()["bytes"] == 1000
        assert table.outstanding() == 0  # a drain waits for no result a poll carried, nor for one too old
    finally:
        table.close()


def test_close_resolves_every_future(engine):
    table = JobTable(engine)
    release = threading.Event()
    ids = [table.submit(held(release), work_seconds=1) for _ in range(3)]
    table.close()
    for job_id in ids:
        with pytest.raises(JobCancelled):
            table.future(job_id).result(timeout=5)
    with pytest.raises(RuntimeError, match="closed"):
        table.submit(held(release), work_seconds=1)


def test_caller_ids_are_unique(table):
    table.submit(lambda ctx: 1, work_seconds=1, job_id="req-1")
    with pytest.raises(ValueError, match="already in use"):
        table.submit(lambda ctx: 1, work_seconds=1, job_id="req-1")
    with pytest.raises(ValueError, match="characters"):
        table.submit(lambda ctx: 1, work_seconds=1, job_id="x" * 200)


def test_a_job_waits_in_the_engines_own_line_for_a_prediction_slot_and_says_where(table, engine):
    """The engine's one prediction slot is taken (a Cog prediction) and another waits in its line, while every
    session row is free: the table's job waits behind them in the engine's line, saying so with the predictions
    ahead of it, moves up when one ahead leaves, and runs once the slot comes back."""
    assert engine.config.max_predictions == 1 and engine.rows_in_use == 0
    running = engine.generate(BatchRequest(prompt="drone", duration=200, seed=1))
    ahead = engine.generate(BatchRequest(prompt="hum", duration=200, seed=1))
    try:
        assert ahead.queue_position == 1 and running.queue_position is None
        job_id = table.submit(lambda ctx: ctx.generate(BatchRequest(prompt="x", duration=1, seed=2)).seed,
                              work_seconds=1)
        assert wait_until(lambda: table.status(job_id).stage == WAITING_FOR_SLOT, 10, 0.02)
        status = table.status(job_id)
        assert (status.state, status.position, status.waiting, status.progress) == (RUNNING, 1, True, 0)
        ahead.cancel()
        assert wait_until(lambda: table.status(job_id).position == 0, 10, 0.02)
        assert table.status(job_id).stage == WAITING_FOR_SLOT
        running.cancel()
        assert table.future(job_id).result(timeout=30) == 2
    finally:
        running.cancel()
        ahead.cancel()
