"""Concurrent predictions: decoded together in shared forwards, each with the bytes it has alone; past the slots
they wait in line, and every slot comes back however a prediction ends."""

import threading
import time
from concurrent.futures import Future

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.api import BatchRequest, Engine, EngineConfig, SessionSettings
from engine.runtime.admission import PredictionSlots
from engine.work.batch import BatchJob, GenerationCancelled
from tests.support.helpers import wait_until


@pytest.fixture(scope="module", params=["off", "static"], ids=["eager-forward", "capturable-step"])
def three_slots(demo_dir, request):
    """Three prediction slots on a random LM of width 64: wide enough that a matmul over 2 rows rounds otherwise
    than one over more (the demo's 32 is not), so the test fails if predictions' bytes depend on their company.
    With the eager forward predictions share a padded forward of their own; with the capturable step (CUDA's,
    run eagerly here) they and the session share one row bucket of 8 or 16 rows."""
    from benchmarks.engine_bench import build_model

    engine = Engine(build_model({"dim": 64, "layers": 2, "heads": 2}),
                    EngineConfig(max_sessions=1, max_predictions=3, weight_format="float32",
                                 compile_step=request.param))
    yield engine
    engine.close()


def _request(seed: int, prompt: str = "lo-fi beat", duration: int = 2, **extra) -> BatchRequest:
    return BatchRequest(prompt=prompt, duration=duration, seed=seed, **extra)


def test_a_seeded_prediction_gives_the_same_bytes_alone_or_among_others(three_slots):
    engine = three_slots
    alone = engine.generate(_request(5)).wait()
    session = engine.open_session(SessionSettings(styles=("dub",), weights=(1.0,), chunk_seconds=0.5), seed=1)
    try:
        session.next_chunk().result(timeout=60)
        steps, rows = [], []  # per step: predictions and whether a session stepped, and its forwards
        scheduler = engine.scheduler
        real_once, real_step, real_forward = scheduler.run_once, scheduler._step, scheduler._forward

        def iteration():  # one step of the scheduler: the live streams', then the predictions' where admitted
            steps.append({"predictions": 0, "live": False, "forwards": []})
            return real_once()

        def counting(active):
            steps[-1]["predictions"] += sum(1 for s in active if s.target_frames is not None)
            steps[-1]["live"] |= any(s.target_frames is None for s in active)
            rows.extend((s.target_frames is None, s.rows) for s in active)
            return real_step(active)

        def recording(run):
            logits = real_forward(run)
            steps[-1]["forwards"].append(sum(1 for s in run if s.target_frames is not None))
            return logits

        engine.scheduler.run_once, engine.scheduler._step, engine.scheduler._forward = iteration, counting, recording
        try:
            done = threading.Event()

            def listening() -> None:  # the session steps beside the predictions
                while not done.is_set():
                    session.next_chunk().result(timeout=60)

            listener = threading.Thread(target=listening)
            listener.start()
            jobs = [engine.generate(_request(seed, prompt, duration=d, top_p=p))
                    for seed, prompt, d, p in ((9, "drums", 3, 0.9), (5, "lo-fi beat", 2, 0.0), (2, "harp", 1, 0.0))]
            results = [job.wait() for job in jobs]
            done.set()
            listener.join(timeout=60)
        finally:
            del engine.scheduler.run_once, engine.scheduler._step, engine.scheduler._forward
    finally:
        session.close()
    shared = [step for step in steps if step["live"] and step["predictions"] == 3]
    assert shared, "the three predictions never shared a step with the session"
    # beside the session's forward, the predictions' one (none while they prefill), never one each
    assert all(sorted(step["forwards"]) in ([0], [0, 3]) for step in shared), [s["forwards"] for s in shared]
    assert any(step["forwards"] == [0, 3] for step in shared)
    # sessions and predictions each in their own rows: the predictions' forward has the same rows however many run
    scheduler = engine.scheduler
    assert all(r.stop <= scheduler.live_rows for live, r in rows if live)
    assert all(scheduler.prediction_start <= r.start and r.stop <= scheduler.prediction_start + 6
               for live, r in rows if not live)
    assert torch.equal(results[1].tokens, alone.tokens)
    assert torch.equal(results[1].wav, alone.wav)
    assert not torch.equal(results[0].tokens[:, :100], alone.tokens[:, :100])


def test_predictions_past_the_slots_wait_and_a_waiting_one_can_be_cancelled(engine):
    """The session engine has one prediction slot: the second waits, the third is cancelled while waiting."""
    first = engine.generate(_request(1, duration=3))
    second = engine.generate(_request(2, duration=1))
    third = engine.generate(_request(3, duration=1))
    assert engine.predictions.waiting == 2
    third.cancel()
    with pytest.raises(GenerationCancelled):
        third.future.result(timeout=5)
    assert first.wait().tokens.shape[-1] == 150 and second.wait().tokens.shape[-1] == 50
    assert wait_until(lambda: engine.predictions.waiting == 0 and engine.rows_in_use == 0, 10)
    assert engine.generate(_request(4, duration=1)).wait().seed == 4  # the slot came back


class _Fake:
    """Stands for a Prediction: `start` records itself; the test resolves the job."""

    def __init__(self, started: list) -> None:
        self.job = BatchJob(prepared=None)
        self.job._on_cancel = lambda: None
        self._started = started

    def start(self) -> BatchJob:
        self.job._on_cancel = lambda: self.job.fail(GenerationCancelled())
        self._started.append(self)
        return self.job


@settings(max_examples=60, deadline=None)
@given(slots=st.integers(1, 3), actions=st.lists(st.tuples(st.sampled_from(["admit", "finish", "fail", "cancel"]),
                                                           st.integers(0, 20)), max_size=40))
def test_slots_never_run_more_than_their_number_and_always_come_back(slots, actions):
    line = PredictionSlots(slots)
    started: list[_Fake] = []
    admitted: list[_Fake] = []
    for action, pick in actions:
        if action == "admit":
            fake = _Fake(started)
            assert line.admit(fake) is fake.job
            admitted.append(fake)
        elif admitted:
            fake = admitted[pick % len(admitted)]
            if action == "finish":
                fake.job.succeed(object())
            elif action == "fail":
                fake.job.fail(RuntimeError("boom"))
            else:
                fake.job.cancel()
        running = [f for f in started if not f.job.future.done()]
        assert len(running) <= slots
        unresolved_waiting = [f for f in admitted if f not in started and not f.job.future.done()]
        assert len(running) == slots or not unresolved_waiting, "a slot is free while a prediction waits"
    for fake in admitted:
        fake.job.succeed(object()) if fake in started else fake.job.cancel()
    for fake in admitted:
        assert fake.job.future.done()
    assert line.waiting == 0 and line._free == slots


def test_a_slot_comes_back_when_start_raises():
    line = PredictionSlots(1)

    class Broken(_Fake):
        def start(self) -> BatchJob:
            raise RuntimeError("no")

    broken = Broken([])
    line.admit(broken)
    with pytest.raises(RuntimeError, match="no"):
        broken.job.future.result(timeout=1)
    started: list = []
    assert line.admit(_Fake(started)) and len(started) == 1


def test_a_slot_freed_on_another_thread_starts_the_next_one():
    line = PredictionSlots(1)
    started: list = []
    first, second = _Fake(started), _Fake(started)
    line.admit(first)
    line.admit(second)
    done = Future()
    threading.Thread(target=lambda: (time.sleep(0.05), first.job.succeed(1), done.set_result(True))).start()
    done.result(timeout=5)
    assert started == [first, second]


def test_a_streams_logits_do_not_depend_on_the_streams_beside_it(three_slots):
    """A prediction's logits are bit for bit those it has alone, whatever else shares the step: StepDecoder.step_streams
    pads the weight matmuls to a fixed row count (without the padding they differ in the last bits); the
    capturable step computes the predictions' whole region, a fixed 8 rows, however many of them are active."""
    from engine.lm.conditions import text_condition
    from engine.lm.decoder import StepDecoder
    from engine.lm.static_step import CapturableStep, Region

    lm = three_slots.model.musicgen.lm
    capturable = three_slots.step_mode != "off"
    first = 8 if capturable else 0  # the predictions' region follows 8 live rows
    generator = torch.Generator().manual_seed(0)
    twins = []
    for _ in range(2):
        decoder = StepDecoder(lm, max_rows=first + (8 if capturable else 6), max_steps=32)
        for row, text in enumerate(("drums", None, "harp", None, "a longer prompt for the bass", None)):
            decoder.set_condition(first + row, *text_condition(lm, text))
        twins.append(decoder)
    groups = [slice(first + 2 * i, first + 2 * i + 2) for i in range(3)]
    prefills = [torch.randint(0, lm.card, (2, lm.num_codebooks, length), generator=generator) for length in (5, 9, 3)]
    for decoder in twins:
        for group, prefill in zip(groups, prefills, strict=True):
            decoder.forward(group, prefill)
    tokens = torch.randint(0, lm.card, (6, lm.num_codebooks), generator=generator)
    with torch.no_grad():
        if capturable:
            regions = [Region(0, (8,)), Region(8, (8,))]
            alone = CapturableStep(twins[0], compiled=False, regions=regions)(groups[1], tokens[2:4])
            shared = CapturableStep(twins[1], compiled=False, regions=regions)(list(range(8, 14)), tokens)
        else:
            alone = twins[0].step_streams([groups[1]], tokens[2:4], pad_to=8)
            shared = twins[1].step_streams(groups, tokens, pad_to=8)
    assert torch.equal(alone, shared[2:4])
