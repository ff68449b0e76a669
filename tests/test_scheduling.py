"""Predictions never hold the engine thread for long: prefills run in slices between session steps, and the
codec decode of a prediction runs in pieces on the codec thread while its tokens come."""

import threading

from engine.batch import DECODE_EVERY_FRAMES, BatchRequest
from engine.codec_stream import StreamingCodecDecoder
from engine.decoder import StepDecoder
from engine.jam import JamSettings
from tests.helpers import sine_wav


def test_a_long_prefill_is_sliced_between_session_steps(engine, monkeypatch, tmp_path):
    calls: list[tuple[int, str]] = []
    forward = StepDecoder.forward

    def recording(self, rows, tokens):
        calls.append((tokens.shape[-1], threading.current_thread().name))
        return forward(self, rows, tokens)

    monkeypatch.setattr(StepDecoder, "forward", recording)
    # 5 s chunks: the session wants steps nearly all the time (it pauses only between two chunk requests)
    session = engine.open_session(JamSettings(styles=("dub",), weights=(1.0,), chunk_seconds=5.0), seed=1)
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
