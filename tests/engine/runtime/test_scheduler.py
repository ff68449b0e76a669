"""Predictions never hold the engine thread for long: prefills run in slices between session steps, and the
codec decode of a prediction runs in pieces on the codec thread while its tokens come. A relayout whose cache copy
fails moves no stream."""

import contextlib
import threading
import time
import typing as tp
from dataclasses import replace

import pytest
import torch

from engine.codec.stream import StreamingCodecDecoder
from engine.lm.decoder import StepDecoder
from engine.runtime import deadlines as deadlines_rule
from engine.runtime.scheduler import Scheduler
from engine.runtime.streams import SamplingParams
from engine.work.batch import BatchRequest
from engine.work.prediction import DECODE_EVERY_FRAMES
from engine.work.session import SessionSettings
from tests.support.helpers import FailingGather, sine_wav, wait_until


def test_a_long_prefill_is_sliced_between_session_steps(engine, monkeypatch, tmp_path):
    calls: list[tuple[int, str]] = []
    forward = StepDecoder._forward  # under both the prefill's forward and the sessions' step_streams

    def recording(self, groups, tokens, *args, **kwargs):
        calls.append((tokens.shape[-1], threading.current_thread().name))
        return forward(self, groups, tokens, *args, **kwargs)

    monkeypatch.setattr(StepDecoder, "_forward", recording)
    # 5 s chunks: the session wants steps nearly all the time (it pauses only between two chunk requests)
    session = engine.open_session(SessionSettings(styles=("dub",), weights=(1.0,), chunk_seconds=5.0), seed=1)
    try:
        session.next_chunk().result(timeout=60)
        calls.clear()
        clip = sine_wav(tmp_path / "clip.wav", seconds=20.0)  # a 1001-step prefill
        job = engine.generate(BatchRequest(prompt="x", input_audio=clip, continuation=True, duration=1, seed=1))
        while not job.future.done():
            session.next_chunk().result(timeout=60)
        job.wait()
    finally:
        session.close()
    slice_steps = engine.config.prefill_slice_steps
    slices = [i for i, (steps, _) in enumerate(calls) if steps > 1]
    assert max(steps for steps, _ in calls) <= slice_steps
    assert len(slices) >= 1001 // slice_steps
    back_to_back = sum(1 for a, b in zip(slices, slices[1:], strict=False) if b == a + 1)
    # the session stops wanting steps only between two of its chunk requests (a busy machine widens that gap)
    assert back_to_back <= max(2, len(slices) // 4), "prefill slices ran back to back while the session waited"
    assert {thread for _, thread in calls} == {"engine"}


def test_a_prediction_is_decoded_in_pieces_on_the_codec_thread(engine, monkeypatch):
    pushes: list[tuple[int, str]] = []
    push = StreamingCodecDecoder.push

    def recording(self, frames):
        pushes.append((frames.shape[-1], threading.current_thread().name))
        return push(self, frames)

    monkeypatch.setattr(StreamingCodecDecoder, "push", recording)
    result = engine.generate(BatchRequest(prompt="x", duration=10, seed=1)).wait()
    assert result.wav.shape[-1] == 10 * 32000
    assert len(pushes) >= 500 // DECODE_EVERY_FRAMES
    assert all(frames <= DECODE_EVERY_FRAMES for frames, _ in pushes)
    assert {thread for _, thread in pushes} == {"codec"}


GREEDY = SessionSettings(styles=("jazz",), weights=(1.0,), params=SamplingParams(temperature=0.0), chunk_seconds=0.4)


def _relayout_scenario(engine, failing: tp.Optional[tp.Callable[[], tp.ContextManager]]
                       ) -> dict[str, list[torch.Tensor]]:
    """Two greedy sessions, each chunk asked for alone (so every forward has the same rows in both runs). Inside
    `failing()` every cache copy fails: A's added style needs a copy (B sits right after A, so A moves), closing A
    and opening a third session need none; the operations that fail in the injected run, and the third session,
    are left out of the reference run (`failing` None)."""
    frames: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    a = engine.open_session(GREEDY, seed=1)
    b = engine.open_session(replace(GREEDY, styles=("dub",)), seed=2)

    def take(session, name: str) -> None:
        frames[name].append(session.next_chunk().result(timeout=60).frames)

    try:
        take(a, "a")
        take(b, "b")
        if failing is not None:
            with failing(), pytest.raises(torch.OutOfMemoryError):  # A's new style needs B moved one row on:
                a.update(replace(GREEDY, styles=("jazz", "metal"), weights=(1.0, 1.0))).result(timeout=60)
        take(a, "a")
        take(b, "b")
        with failing() if failing is not None else contextlib.nullcontext():  # nothing moves
            a.close()
            engine.lm_worker.call(lambda: None).result(timeout=10)  # the close has run on the LM thread
        take(b, "b")
        take(b, "b")
        if failing is not None:
            with failing():  # a free block: the new session takes A's old rows, nothing moves
                c = engine.open_session(GREEDY, seed=3)
            assert engine.sessions_open == 2 and engine.rows_in_use == 4
            c.close()
        take(b, "b")
    finally:
        a.close()
        b.close()
    return frames


def test_a_relayout_whose_copy_fails_leaves_every_stream_decoding_as_before(engine, monkeypatch):
    """Out of memory in the KV copy of a relayout (here at its fourth gather, after some rows were gathered):
    every stream decodes exactly the greedy tokens of a run without the failed operations."""
    decoder = engine.scheduler.decoder
    relayout = decoder.relayout
    failures = []
    armed = threading.Event()

    def failing_relayout(sources: list[int]) -> None:
        if not armed.is_set():
            return relayout(sources)
        try:
            with FailingGather(nth=4):
                relayout(sources)
        except torch.OutOfMemoryError:
            failures.append(sources)
            raise

    @contextlib.contextmanager
    def failing():
        armed.set()
        try:
            yield
        finally:
            armed.clear()

    monkeypatch.setattr(decoder, "relayout", failing_relayout)
    reference = _relayout_scenario(engine, None)
    injected = _relayout_scenario(engine, failing)
    assert len(failures) == 1  # only the restyle that had to move A copied a cache
    for name in ("a", "b"):
        assert len(injected[name]) == len(reference[name])
        for index, (ours, theirs) in enumerate(zip(injected[name], reference[name], strict=True)):
            assert torch.equal(ours, theirs), f"session {name}, chunk {index}"
    assert wait_until(lambda: engine.rows_in_use == 0 and engine.sessions_open == 0, 5)


def test_opening_closing_and_restyling_in_place_move_no_cache(engine, monkeypatch):
    """Streams keep their rows: only a restyle that finds its neighbour's rows in the way copies (its own rows)."""
    decoder = engine.scheduler.decoder
    relayout = decoder.relayout
    moved: list[int] = []

    def counting(sources: list[int]) -> None:
        moved.append(sum(1 for target, source in enumerate(sources) if target != source))
        relayout(sources)

    monkeypatch.setattr(decoder, "relayout", counting)
    a = engine.open_session(GREEDY, seed=1)
    b = engine.open_session(replace(GREEDY, styles=("dub",)), seed=2)
    try:
        for session in (a, b):
            session.next_chunk().result(timeout=60)
        rows_b = b.stream.rows
        a.close()  # B stays where it is
        engine.lm_worker.call(lambda: None).result(timeout=10)
        assert b.stream.rows == rows_b and moved == []
        b.update(replace(GREEDY, styles=("dub", "metal"), weights=(1.0, 1.0))).result(timeout=60)
        # its own rows only: the added style starts from a copy of the first's context, the unconditional row moves on
        assert b.stream.rows.start == rows_b.start and moved == [2]
        c = engine.open_session(GREEDY, seed=3)  # into A's old rows
        c.next_chunk().result(timeout=60)
        assert c.stream.rows.stop <= b.stream.rows.start and moved == [2]
        b.next_chunk().result(timeout=60)
        c.close()
    finally:
        a.close()
        b.close()


def test_a_prediction_steps_only_in_the_slack_a_realtime_chunk_leaves(engine, monkeypatch):
    """A chunk due now leaves no slack: the prediction beside it waits until its steps are done; a chunk due in a
    minute leaves plenty, and both step together."""
    monkeypatch.setattr(deadlines_rule, "HOLD_LIMIT_SECONDS", 600.0)  # a slow machine never forces a step through
    order: list[str] = []
    step = Scheduler._step

    def recording(self, active):
        order.append("live" if active[0].target_frames is None else "prediction")
        return step(self, active)

    monkeypatch.setattr(Scheduler, "_step", recording)
    session = engine.open_session(SessionSettings(styles=("dub",), weights=(1.0,), chunk_seconds=2.0), seed=1)
    try:
        session.next_chunk().result(timeout=60)
        job = engine.generate(BatchRequest(prompt="x", duration=20, seed=1))
        assert wait_until(lambda: "prediction" in order, timeout=60)
        order.clear()
        session.next_chunk(deadline=time.monotonic()).result(timeout=60)  # due now
        at_risk = list(order)
        order.clear()
        session.next_chunk(deadline=time.monotonic() + 60).result(timeout=60)  # due in a minute
        relaxed = list(order)
        job.cancel()
    finally:
        session.close()
    last_live = len(at_risk) - 1 - at_risk[::-1].index("live")
    assert at_risk.count("live") >= 90 and "prediction" not in at_risk[:last_live], at_risk
    assert "prediction" in relaxed[:len(relaxed) - 1 - relaxed[::-1].index("live")], relaxed
