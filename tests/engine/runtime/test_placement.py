"""Rows under any sequence of opens, closes and restyles (hypothesis): every stream holds one block of its own rows
inside its region (sessions' rows, then the predictions'), no two blocks overlap, every freed row comes back, and a
stream's rows keep their cache contents wherever a packing moves them."""

import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from engine.params import SamplingParams
from engine.runtime.scheduler import Scheduler
from engine.runtime.streams import Conditioning, new_stream

OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("open"), st.integers(1, 4)),  # a session of 1..4 styles
    st.tuples(st.just("predict"), st.just(1)),
    st.tuples(st.just("restyle"), st.integers(0, 7), st.integers(1, 4)),
    st.tuples(st.just("close"), st.integers(0, 7)),
), min_size=1, max_size=25)


def _conditioning(styles: int) -> Conditioning:
    return Conditioning([f"style {i}" for i in range(styles)], [1.0 / styles] * styles)


def _mark(scheduler: Scheduler, stream, value: float) -> None:
    """Prefills one step on the stream's rows and writes `value` into their first key: what a packing must carry
    along (it copies each row's filled part)."""
    rows = stream.rows.stop - stream.rows.start
    scheduler.decoder.forward(stream.rows, torch.zeros(rows, scheduler.decoder.num_codebooks, 1, dtype=torch.long))
    scheduler.decoder.keys[0, stream.rows, 0, 0, 0] = value


def _check(scheduler: Scheduler, marks: dict) -> None:
    assert {id(s) for s in scheduler.streams} == set(marks), "a stream lost (or kept) its rows"
    held = []
    for stream in scheduler.streams:
        region = scheduler._region(stream)
        assert stream.rows.start in region and stream.rows.stop <= region.stop
        assert stream.rows.stop - stream.rows.start == stream.conditioning.rows
        held.extend(range(stream.rows.start, stream.rows.stop))
        assert (scheduler.decoder.keys[0, stream.rows, 0, 0, 0] == marks[id(stream)]).all()
    assert len(held) == len(set(held)), "two streams share a row"
    assert scheduler.rows_free == scheduler.live_rows + scheduler.prediction_rows - len(held)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS, step_mode=st.sampled_from(["off", "static"]))
# scattered free rows (0-1 and 7) with a prediction placed: the new session's 3 rows need a packing
@example(operations=[("open", 1), ("open", 4), ("predict", 1), ("close", 0), ("open", 2)], step_mode="off")
@example(operations=[("open", 1), ("open", 4), ("close", 0), ("open", 2)], step_mode="off")  # and none beyond
def test_any_interleaving_keeps_every_stream_in_its_own_rows(engine, operations, step_mode):
    lm = engine.model.musicgen.lm
    scheduler = Scheduler(lm, live_rows=8, prediction_rows=4, max_steps=16, step_mode=step_mode, prediction_pad=8)
    relayout = scheduler._relayout
    scheduler._relayout = lambda *args: (event("packed"), relayout(*args))
    marks: dict = {}
    for number, operation in enumerate(operations, start=1):
        kind = operation[0]
        if kind in ("open", "predict"):
            stream = new_stream(lm, _conditioning(operation[1]), SamplingParams(), seed=number, window_frames=8,
                                keep_frames=4, target_frames=8 if kind == "predict" else None)
            try:
                scheduler.add_stream(stream)
            except RuntimeError as exc:
                assert "no decoder rows left" in str(exc)
            else:
                marks[id(stream)] = float(number)
                with torch.no_grad():
                    _mark(scheduler, stream, number)
        elif kind == "restyle":
            live = [s for s in scheduler.streams if s.target_frames is None]
            if live:
                stream = live[operation[1] % len(live)]
                styles = operation[2]
                try:  # the first styles continue from the stream's own rows (all from its first when it grows)
                    scheduler.set_conditioning(stream, _conditioning(styles),
                                               [min(i, stream.conditioning.rows - 2) for i in range(styles)])
                except RuntimeError as exc:
                    assert "no decoder rows left" in str(exc)
        elif kind == "close" and scheduler.streams:
            stream = scheduler.streams[operation[1] % len(scheduler.streams)]
            scheduler.remove_stream(stream)
            del marks[id(stream)]
        with torch.no_grad():
            _check(scheduler, marks)
    for stream in list(scheduler.streams):
        scheduler.remove_stream(stream)
    assert scheduler.rows_free == 12
