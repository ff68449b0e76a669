"""A failure belongs to the stream that caused it; every future resolves; every row and slot comes back.

Failures are injected into the real engine by marker words in prompts and styles: conditioning (the text
conditioner raises), the forward (a forward of rows that include a marked stream raises, so a batched forward
fails for every stream in it and is retried stream by stream), the decode step (guidance raises after the shared
forward), and the session's codec decode.
"""

import threading
import time
from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import EngineConfig
from engine.core import CapacityError, Engine
from engine.lm import conditions
from engine.runtime.scheduler import Scheduler, StreamFailed
from engine.runtime.streams import SamplingParams, Stream
from engine.runtime.worker import EngineUnavailable, Worker
from engine.work import prediction
from engine.work.batch import BatchRequest
from engine.work.session import LiveSession, SessionSettings
from tests.support.helpers import wait_until

FAIL_CONDITION = "fail-at-conditioning"
FAIL_FORWARD = "fail-at-forward"
FAIL_STEP = "fail-at-step"
FAIL_DECODE = "fail-at-decode"
FORWARD_FAILURES: list[int] = []  # the number of streams in each forward the FAIL_FORWARD marker made fail


@pytest.fixture(scope="module")
def faulty_engine(demo_dir):
    """The demo model with three session slots and the injection points armed (only marker words trigger)."""
    patch = pytest.MonkeyPatch()
    real_condition, real_accept, real_decode = conditions.text_condition, Stream.accept_tokens, LiveSession._decode
    real_forward = Scheduler._forward

    def condition(lm, text):
        if text and FAIL_CONDITION in text:
            raise RuntimeError("injected conditioning failure")
        return real_condition(lm, text)

    def forward(self, run):
        if any(FAIL_FORWARD in text for stream in run for text in stream.conditioning.texts):
            FORWARD_FAILURES.append(len(run))
            raise RuntimeError("injected forward failure")
        return real_forward(self, run)

    def accept(self, tokens):
        if any(FAIL_STEP in text for text in self.conditioning.texts):
            raise RuntimeError("injected step failure")
        return real_accept(self, tokens)

    def decode(self, request, frames, start, settings, changes):
        if any(FAIL_DECODE in style for style in settings.styles):
            raise RuntimeError("injected decode failure")
        return real_decode(self, request, frames, start, settings, changes)

    patch.setattr(conditions, "text_condition", condition)
    patch.setattr(Scheduler, "_forward", forward)
    patch.setattr(Stream, "accept_tokens", accept)
    patch.setattr(LiveSession, "_decode", decode)
    engine = Engine.load(demo_dir, device="cpu", config=EngineConfig(max_sessions=3))
    yield engine
    engine.close()
    patch.undo()


def settings_for(style: str) -> SessionSettings:
    return SessionSettings(styles=(style,), weights=(1.0,), chunk_seconds=0.2)


@pytest.mark.parametrize("marker", [FAIL_CONDITION, FAIL_STEP])
def test_a_failing_prediction_leaves_a_live_session_playing(faulty_engine, marker):
    witness = faulty_engine.open_session(settings_for("dub"), seed=1)
    try:
        first = witness.next_chunk()
        job = faulty_engine.generate(BatchRequest(prompt=f"house {marker}", duration=1, seed=1))
        with pytest.raises(RuntimeError, match="injected"):
            job.wait()
        chunks = [first.result(timeout=30)] + [witness.next_chunk().result(timeout=30) for _ in range(3)]
    finally:
        witness.close()
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert wait_until(lambda: faulty_engine.rows_in_use == 0, 5)


@pytest.mark.parametrize("marker", [FAIL_CONDITION, FAIL_FORWARD, FAIL_STEP, FAIL_DECODE])
def test_a_failing_session_fails_alone_with_a_message(faulty_engine, marker):
    witness = faulty_engine.open_session(settings_for("dub"), seed=1)
    broken = faulty_engine.open_session(settings_for(f"jazz {marker}"), seed=2)
    try:
        bad, good = broken.next_chunk(), witness.next_chunk()
        with pytest.raises(RuntimeError, match="injected"):
            bad.result(timeout=30)
        assert good.result(timeout=30).index == 0
        with pytest.raises(RuntimeError, match="injected"):  # a failed session says so at once from then on
            broken.next_chunk().result(timeout=5)
        assert witness.next_chunk().result(timeout=30).index == 1
        prediction = faulty_engine.generate(BatchRequest(prompt="house", duration=1, seed=3)).wait()
        assert torch.isfinite(prediction.wav).all()
    finally:
        broken.close()
        witness.close()
    assert wait_until(lambda: faulty_engine.rows_in_use == 0 and faulty_engine.sessions_open == 0, 5)


def test_a_batched_forward_failing_for_one_stream_is_retried_stream_by_stream(faulty_engine):
    """Two sessions share a forward; it fails because of one of them. Each is retried alone: the culprit fails
    with the phase named, and the other decodes exactly the frames it decodes with no culprit beside it (greedy)."""
    greedy = SessionSettings(styles=("dub",), weights=(1.0,), params=SamplingParams(temperature=0.0),
                         chunk_seconds=10.0)

    def witness_frames(with_culprit: bool) -> list[torch.Tensor]:
        witness = faulty_engine.open_session(greedy, seed=1)
        culprit = None
        try:
            first = witness.next_chunk()  # 500 steps: the culprit joins while the witness is stepping
            if with_culprit:
                culprit = faulty_engine.open_session(replace(greedy, styles=(f"jazz {FAIL_FORWARD}",)), seed=2)
                with pytest.raises(StreamFailed, match="decode step failed: RuntimeError: injected forward"):
                    culprit.next_chunk().result(timeout=60)
            return [first.result(timeout=120).frames, witness.next_chunk().result(timeout=120).frames]
        finally:
            witness.close()
            if culprit is not None:
                culprit.close()

    reference = witness_frames(with_culprit=False)
    FORWARD_FAILURES.clear()
    injected = witness_frames(with_culprit=True)
    assert FORWARD_FAILURES[0] == 2, "the culprit never shared a forward: the retry stream by stream did not run"
    assert FORWARD_FAILURES[1:] == [1]  # then the culprit alone, and never again
    for ours, theirs in zip(injected, reference, strict=True):
        assert torch.equal(ours, theirs)
    assert wait_until(lambda: faulty_engine.rows_in_use == 0 and faulty_engine.sessions_open == 0, 5)


def test_a_failing_prediction_codec_fails_the_prediction_alone(faulty_engine, monkeypatch):

    class BrokenCodec(prediction.StreamingCodecDecoder):
        def push(self, frames):
            raise RuntimeError("injected codec failure")

    monkeypatch.setattr(prediction, "StreamingCodecDecoder", BrokenCodec)
    witness = faulty_engine.open_session(settings_for("dub"), seed=1)
    try:
        with pytest.raises(RuntimeError, match="injected codec failure"):
            faulty_engine.generate(BatchRequest(prompt="house", duration=3, seed=1)).wait()
        assert witness.next_chunk().result(timeout=30).index == 0
    finally:
        witness.close()


OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("open"), st.sampled_from(["jazz", "dub", FAIL_CONDITION, FAIL_FORWARD, FAIL_STEP,
                                                FAIL_DECODE])),
    st.tuples(st.just("chunk"), st.integers(0, 3)),
    st.tuples(st.just("update"), st.integers(0, 3), st.sampled_from(["metal", FAIL_STEP, "ambient"])),
    st.tuples(st.just("close"), st.integers(0, 3)),
    st.tuples(st.just("predict"), st.sampled_from(["house", FAIL_STEP, FAIL_CONDITION]), st.booleans()),
    st.tuples(st.just("wait"), st.floats(0, 0.1)),
), min_size=1, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=OPERATIONS)
def test_random_interleavings_resolve_everything_and_free_every_row(faulty_engine, operations):
    engine = faulty_engine
    witness = engine.open_session(settings_for("witness"), seed=0)
    witness_chunks = [witness.next_chunk()]
    sessions: list = []
    futures, jobs = [], []
    for operation in operations:
        kind = operation[0]
        if kind == "open":
            try:
                sessions.append(engine.open_session(settings_for(operation[1]), seed=len(sessions)))
            except CapacityError:
                pass
        elif kind == "chunk" and sessions:
            futures.append(sessions[operation[1] % len(sessions)].next_chunk())
        elif kind == "update" and sessions:
            sessions[operation[1] % len(sessions)].update(settings_for(operation[2]))
        elif kind == "close" and sessions:
            sessions.pop(operation[1] % len(sessions)).close()
        elif kind == "predict":
            job = engine.generate(BatchRequest(prompt=operation[1], duration=1, seed=1))
            if operation[2]:
                job.cancel()
            jobs.append(job)
        elif kind == "wait":
            time.sleep(operation[1])
        if witness_chunks[-1].done():
            witness_chunks.append(witness.next_chunk())
    for session in sessions:
        session.close()
    for future in futures:
        future.exception(timeout=60)  # resolves: a chunk, a failure or SessionClosed; never hangs
    for job in jobs:
        job.future.exception(timeout=60)
    for chunk in witness_chunks:
        assert chunk.result(timeout=60).audio.isfinite().all()  # the witness never failed
    witness.close()
    assert wait_until(lambda: engine.rows_in_use == 0 and engine.sessions_open == 0, 10), engine.describe()
    assert engine.health().ok


def test_the_worker_survives_anything_a_job_raises_and_answers_every_future():
    worker = Worker("test")
    try:
        for exc in (RuntimeError("x"), KeyboardInterrupt(), SystemExit(3)):
            def raising(exc=exc):
                raise exc
            assert isinstance(worker.call(raising).exception(timeout=5), type(exc))
        assert worker.call(lambda: 42).result(timeout=5) == 42
        assert worker.problem is None
        blocker = threading.Event()
        worker.call(blocker.wait)
        queued = [worker.call(lambda: 1) for _ in range(3)]
        closing = threading.Thread(target=worker.close, kwargs={"timeout": 10})
        closing.start()
        blocker.set()
        closing.join()
        for future in queued:  # queued before the close: run or refused, never left hanging
            future.exception(timeout=5)
        assert isinstance(worker.call(lambda: 1).exception(timeout=1), EngineUnavailable)
    finally:
        worker.close()


def test_a_stuck_worker_is_reported_and_refuses_work():
    worker = Worker("test", stall_seconds=0.2)
    release = threading.Event()
    try:
        worker.call(release.wait)
        time.sleep(0.4)
        assert "busy with one task" in worker.problem
        refused = worker.call(lambda: 1)
        assert isinstance(refused.exception(timeout=1), EngineUnavailable)
    finally:
        release.set()
        worker.close()


def test_an_unhealthy_engine_fails_fast_and_health_says_so(demo_dir):
    from engine.work.batch import BatchRequest

    engine = Engine.load(demo_dir, device="cpu", config=EngineConfig(max_sessions=1))
    engine.lm_worker.close()
    try:
        assert not engine.health().ok and "shut down" in engine.health().problem
        started = time.monotonic()
        with pytest.raises(EngineUnavailable, match="cannot take work"):
            engine.generate(BatchRequest(prompt="x", duration=1))
        with pytest.raises(EngineUnavailable):
            engine.open_session(settings_for("x"), seed=1)
        assert time.monotonic() - started < 1
        assert engine.sessions_open == 0
    finally:
        engine.close()
