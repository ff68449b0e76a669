"""A session's live input (engine.work.live_input): the player's audio mixed into the context, on the demo model.

Each case is an A/B pair on one seed: the same session with and without input. The input must change the music
from the next chunk on and nothing before it, and a session that gets none (or only input it drops) must give the
same bytes as one that never heard of input.
"""

import math
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.work.chunk import SessionClosed
from engine.work.live_input import HISTORY_SECONDS, WARN_EVERY_SECONDS, DropTally, InputClock, InputReceipt, LiveInput
from engine.work.session import SessionSettings
from tests.support.helpers import wait_until
from tests.support.sessions import SETTINGS, collect, first_difference, stitch
from tests.support.steps import reference_inputs

HALF = replace(SETTINGS, chunk_seconds=0.5)


def tone(seconds: float, rate: int = 32000, freq: float = 220.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * math.pi * freq * t)).astype(np.float32)
    return np.stack([wave] * channels) if channels > 1 else wave


def run(engine, seed: int, before: int, after: int, feed=None, settings: SessionSettings = HALF):
    """`before` chunks, then `feed(session, chunks)` (the player), then `after` more; the stitched audio."""
    session = engine.open_session(settings, seed=seed)
    try:
        chunks = collect(session, before)
        if feed is not None:
            feed(session, chunks)
        chunks += collect(session, after)
    finally:
        session.close()
    return stitch(chunks), chunks


def test_input_changes_the_music_from_the_next_chunk_and_nothing_before(engine):
    """The player plays over the second chunk (which they heard); the chunks already made stay, the next ones
    continue from the mixed context."""
    def play(session, chunks):
        receipt = session.play_input(tone(0.5), 32000, at=chunks[1].start_seconds)
        assert receipt.dropped is None and receipt.start_seconds == pytest.approx(0.5)

    plain, _ = run(engine, seed=11, before=3, after=3)
    played, chunks = run(engine, seed=11, before=3, after=3, feed=play)
    first = first_difference(plain, played)
    assert first >= int(1.5 * 32000), "input changed audio that was already made"
    assert first != -1 and first < int(2.5 * 32000), "the chunk after the input did not continue from it"
    assert chunks[3].start_seconds == pytest.approx(1.5)


def test_a_session_without_input_gives_the_same_bytes(engine):
    """Input that is dropped (placed too far ahead) leaves nothing behind: the bytes are those of a session that
    got none, which are those of the same seed again."""
    def dropped(session, chunks):
        assert session.play_input(tone(0.5), 32000, at=60.0).dropped is not None

    a, _ = run(engine, seed=12, before=2, after=2)
    b, _ = run(engine, seed=12, before=2, after=2, feed=dropped)
    assert torch.equal(a, b)


def test_mix_and_replace_differ_and_gain_is_taken_from_the_settings(engine):
    def player(settings):
        def play(session, chunks):
            session.update(settings).result(timeout=60)
            session.play_input(tone(0.5, rate=48000, channels=2), 48000, at=chunks[1].start_seconds)
        return play

    mixed, _ = run(engine, seed=13, before=2, after=2, feed=player(replace(HALF, input_mode="mix")))
    replaced, _ = run(engine, seed=13, before=2, after=2, feed=player(replace(HALF, input_mode="replace")))
    louder, _ = run(engine, seed=13, before=2, after=2, feed=player(replace(HALF, input_gain=2.0)))
    assert not torch.equal(mixed, replaced) and not torch.equal(mixed, louder)
    assert torch.equal(mixed[:, : 32000], replaced[:, : 32000])


def test_unplaced_input_continues_the_last_piece(engine):
    session = engine.open_session(HALF, seed=14)
    try:
        collect(session, 2)
        first = session.play_input(tone(0.2), 32000)
        second = session.play_input(tone(0.3), 32000)
        assert first.start_seconds == pytest.approx(1.0 - 0.2)  # ends where the produced audio ends
        assert second.start_seconds == pytest.approx(1.0)  # right after it
    finally:
        session.close()


def test_bad_input_is_refused_and_the_session_plays_on(engine):
    session = engine.open_session(HALF, seed=15)
    try:
        collect(session, 1)
        with pytest.raises(ValueError, match="at most 4 s"):
            session.play_input(tone(5.0), 32000)
        with pytest.raises(ValueError, match="not finite"):
            session.play_input(np.full(100, np.nan, dtype=np.float32), 32000)
        with pytest.raises(ValueError, match="channels"):
            session.play_input(np.zeros((3, 100), dtype=np.float32), 32000)
        with pytest.raises(ValueError, match="float samples"):
            session.play_input(np.zeros(100, dtype=np.int16), 32000)
        with pytest.raises(ValueError, match="sample_rate"):
            session.play_input(tone(0.1), 100)
        with pytest.raises(ValueError, match="time"):
            session.play_input(tone(0.1), 32000, at=-1.0)
        assert session.next_chunk().result(timeout=120).index == 1
    finally:
        session.close()
    with pytest.raises(SessionClosed):
        session.play_input(tone(0.1), 32000)


def test_input_faster_than_real_time_is_dropped_with_a_warning(caplog):
    """The budget refills with wall-clock time: a burst beyond it is dropped (and logged), the queue stays bounded."""
    live = LiveInput(32000, 1, 640)
    receipts = [live.place(tone(2.0), 32000, at=None, produced=10 * 32000) for _ in range(6)]
    dropped = [r for r in receipts if r.dropped]
    assert dropped and "faster than real time" in dropped[0].dropped
    assert sum(r.seconds for r in receipts if r.dropped is None) <= 5.0 + 1e-6
    assert "live input dropped" in caplog.text


def test_input_too_old_or_too_far_ahead_is_dropped():
    live = LiveInput(32000, 1, 640)
    assert "ahead" in live.place(tone(0.5), 32000, at=20.0, produced=10 * 32000).dropped
    assert "behind" in live.place(tone(0.5), 32000, at=1.0, produced=int((2 + HISTORY_SECONDS) * 32000)).dropped
    assert not live.waiting()


def test_a_restart_forgets_waiting_input(engine):
    session = engine.open_session(HALF, seed=16)
    try:
        collect(session, 1)
        assert session.play_input(tone(0.5), 32000, at=1.0).dropped is None  # waits: that span is not made yet
        session.restart(seed=16)
        assert not session._input.waiting()
    finally:
        session.close()


def test_a_rewritten_context_is_refed_from_the_first_changed_step(engine):
    """The decoder keeps the cache before the rewrite and feeds the rest again (StepDecoder.truncate): its logits are
    audiocraft's on the rewritten sequence, as a fresh prefill of all of it would give."""
    from engine.lm.conditions import text_condition
    from engine.lm.decoder import StepDecoder

    lm = engine.model.musicgen.lm
    _, old = reference_inputs(lm, "jazz", 40, seed=1)
    conditions, new = reference_inputs(lm, "jazz", 40, seed=2)
    changed = 25  # frame 24 on: the sequence differs from step 25 on (frame f's codebook 0 is the input of f + 1)
    new = torch.cat([old[:, :, :changed], new[:, :, changed:]], dim=2)
    with torch.no_grad():
        reference = lm(new, conditions=[], condition_tensors=conditions)
    decoder = StepDecoder(lm, max_rows=2, max_steps=48)
    decoder.set_condition(0, *text_condition(lm, "jazz"))
    decoder.set_condition(1, *text_condition(lm, None))
    with torch.no_grad():
        decoder.forward(slice(0, 2), old)
        decoder.truncate(slice(0, 2), changed)
        refed = decoder.forward(slice(0, 2), new[:, :, changed:])
    assert (refed - reference[:, :, changed:]).abs().max().item() < 1e-4


@pytest.mark.parametrize("mode", ["mix", "replace"])
def test_contiguous_pieces_are_resampled_as_one_and_mixed_over_the_output(engine, mode):
    """A transport's 20 ms frames at 48 kHz become one run at the model's 32 kHz (no edge at every frame), placed on
    the timeline over the recorded output: added to it (mix) or in its place (replace), at the session's gain."""
    from audiocraft.data.audio_utils import convert_audio

    live = LiveInput(32000, 1, 640)
    output = torch.from_numpy(tone(2.0, freq=110.0))[None] * 0.2
    live.record(0, output)
    frames = tone(0.5, rate=48000)
    for index in range(25):
        assert live.place(frames[index * 960: (index + 1) * 960], 48000, at=0.5 if index == 0 else None,
                          produced=64000).dropped is None
    encoded = []

    def encode(wav, rate):
        encoded.append(wav)
        return engine.runtime.encode_now(wav, rate)

    injection = live.prepare(0.5, mode, encode)
    assert injection.first_frame == 25 and injection.tokens.shape[-1] == 25 and injection.pieces == 1
    mixed = encoded[0][:, 4 * 640:]  # after the encoder's left context: 4 frames of the output
    assert torch.equal(encoded[0][:, : 4 * 640], output[:, 21 * 640: 25 * 640])
    played = 0.5 * convert_audio(torch.from_numpy(frames)[None], 48000, 32000, 1)
    expected = output[:, 16000: 32000] + played if mode == "mix" else played
    assert (mixed - expected.clamp(-1, 1)).abs().max() < 1e-5
    assert not live.waiting()


def test_silence_in_mix_mode_leaves_the_context_alone(engine):
    """A muted microphone sends zeros: mixed over the output they add nothing, so nothing is encoded or rewritten
    (re-encoding the model's own output would still change its tokens)."""
    def silence(session, chunks):
        assert session.play_input(np.zeros(16000, dtype=np.float32), 32000, at=0.5).dropped is None

    a, _ = run(engine, seed=17, before=2, after=2)
    b, _ = run(engine, seed=17, before=2, after=2, feed=silence)
    assert torch.equal(a, b)


def test_input_that_comes_while_a_chunk_is_made_is_heard_in_that_chunk(engine):
    """The chunk in the making does not wait for the next one to hear the player: the LM thread is held just after
    it took up the request, the input comes, and the rest of that chunk continues from the mixed context."""
    def chunk_one(play: bool) -> torch.Tensor:
        session = engine.open_session(replace(SETTINGS, chunk_seconds=2.0), seed=18)
        try:
            collect(session, 1)
            gate = threading.Event()
            future = session.next_chunk()
            engine.runtime.lm_worker.call(gate.wait)
            assert wait_until(lambda: session._pending is not None, 60)
            if play:
                assert session.play_input(tone(1.0), 32000, at=1.0).dropped is None
                assert wait_until(lambda: not session._input.waiting(), 60)  # mixed and encoded, waiting to be written
            gate.set()
            return future.result(timeout=120).audio
        finally:
            session.close()

    plain, played = chunk_one(False), chunk_one(True)
    assert not torch.equal(plain, played)


def test_a_transports_pieces_are_placed_where_the_listener_is_then_follow_on_until_they_drift():
    """InputClock: the one rule WebRTC's microphone and FastRTC's WebSocket media frames place their pieces by."""
    clock = InputClock()

    def landed(start: float, dropped: str | None = None) -> None:
        clock.landed(InputReceipt(start_seconds=start, seconds=0.1, dropped=dropped))

    assert clock.place(None, 0.1) is None, "nothing heard yet: the session places it"
    landed(0.0)
    assert clock.place(5.1, 0.1) == pytest.approx(5.0), "a piece ends where the listener is as it arrives"
    landed(5.0)
    assert clock.place(5.23, 0.1) is None, "the next one follows on (the session's cursor)"
    landed(5.1)
    assert clock.place(5.9, 0.1) is None
    landed(5.2)  # 0.6 s behind the listener: within the drift allowed
    assert clock.place(7.0, 0.1) is None
    landed(5.3)  # a pause, or a restart: 1.6 s away (DRIFT_SECONDS is 1), so the next is placed again
    assert clock.place(7.1, 0.1) == pytest.approx(7.0)
    landed(7.0, dropped="input comes faster than real time")
    assert clock.place(7.2, 0.1) == pytest.approx(7.1), "after a drop it is placed again"
    landed(7.1)
    assert clock.place(7.3, 0.1) is None
    clock.landed(None)  # refused, or no session played
    assert clock.place(7.4, 0.1) == pytest.approx(7.3), "after a piece that never got there it is placed again"
    assert clock.place(0.05, 0.1) == 0.0, "never before the timeline's start"


def test_dropped_input_is_told_now_and_then_with_the_count():
    """DropTally: the engine's log and the transports' warnings to their clients, never once per piece."""
    drops = DropTally()
    assert drops.dropped(now=10.0) == 1, "the first drop is told at once"
    assert drops.dropped(now=11.0) is None
    assert drops.dropped(now=12.0) is None
    assert drops.dropped(now=10.0 + WARN_EVERY_SECONDS) == 3, "then with how many since"
    assert drops.dropped(now=10.0 + WARN_EVERY_SECONDS + 0.1) is None
