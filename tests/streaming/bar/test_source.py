"""The bar-mode chunk source on the real engine (demo checkpoint): exact chunk lengths across model chunks,
reseeds and splices; the loop as the model's context; slots freed and futures resolved however it ends."""

import math
from concurrent.futures import TimeoutError as FutureTimeout

import pytest
import torch

from engine.api import SessionClosed
from streaming.bar.source import BarParams, BarSource, context_window


def loop(seconds=3.0, rate=44100):
    t = torch.arange(int(seconds * rate)) / rate
    return (0.3 * torch.sin(2 * math.pi * 220 * t))[None].repeat(2, 1), rate


def params(**changes):
    base = dict(bpm=93.5, beats_per_bar=2, bars_per_chunk=1, target_sr=48000, styles=("jazz",), style_weights=(1.0,))
    return BarParams(**{**base, **changes})


def test_chunks_stay_exact_through_reseed_and_splice(engine):
    p = params(loudness_mode="auto")
    source = BarSource(engine, p, loop(), seed=1)
    try:
        window, hop = context_window(engine.describe())
        assert source.session._prompt_frames == window // hop  # the loop's context is the model's prompt
        total = frames = 0
        for k in range(12):
            stream = source.session.stream
            if k == 4:  # a new context now: a new model stream before chunk 4
                source.reseed(loop(2.0, 32000), seed=2).result(timeout=60)
                assert source.session.stream is not stream
            if k == 8:
                source.reseed_splice(1.0, loop(1.0, 22050))
            chunk = source.next_chunk().result(timeout=60)
            if k == 8:  # the splice installs right after the next chunk
                assert source.session.stream is not stream
            total += chunk.audio.shape[-1]
            assert chunk.index == k and chunk.sample_rate == 48000 and chunk.audio.shape[0] == 2
            assert total == p.clock.at(k + 1)  # [round(k*S), round((k+1)*S)) of one stream, whatever happened
            assert chunk.loudness["method"] in ("lufs", "rms")
            frames += chunk.frames.shape[-1]  # a chunk cut from audio made for the one before has none of its own
        assert frames >= (total / 48000 - 2.0) * engine.model.frame_rate
        assert source.session._prompt_frames == window // hop  # the splice's context: a whole window again
        assert engine.sessions_open == 1
        first = source.update(params(styles=("rock", "funk"), style_weights=(1.0, 2.0), temperature=0.5,
                                     topk=5)).result(timeout=30)
        assert 12 <= first <= 14  # where the engine placed it: in the audio after the last chunk cut, or soon
        chunks = [source.next_chunk().result(timeout=60) for _ in range(3)]
        assert chunks[-1].params.styles == ("rock", "funk") and chunks[-1].params.topk == 5
        assert chunks[-1].settings.params.top_k == 5
    finally:
        source.close()
    assert engine.sessions_open == 0


def test_close_resolves_the_chunk_in_the_making(engine):
    source = BarSource(engine, params(bpm=60, bars_per_chunk=4), loop(), seed=3)  # an 8 s chunk
    pending = source.next_chunk()
    source.close()
    with pytest.raises((SessionClosed, RuntimeError)):
        pending.result(timeout=30)
    with pytest.raises(SessionClosed):
        source.next_chunk().result(timeout=5)
    source.close()  # twice is fine
    assert engine.sessions_open == 0


def test_a_full_engine_refuses_a_bar_source(engine):
    from engine.core import CapacityError

    sources = [BarSource(engine, params(), loop(), seed=s) for s in range(engine.config.max_sessions)]
    try:
        with pytest.raises(CapacityError):
            BarSource(engine, params(), loop(), seed=9)
    finally:
        for source in sources:
            source.close()
    assert engine.sessions_open == 0


def test_restart_after_a_failure_goes_on_from_the_loop(engine):
    source = BarSource(engine, params(), loop(), seed=4)
    try:
        first = source.next_chunk().result(timeout=60)
        source.restart(seed=5).result(timeout=60)
        second = source.next_chunk().result(timeout=60)
        assert second.index == 1 and first.audio.shape[-1] + second.audio.shape[-1] == params().clock.at(2)
    except FutureTimeout:
        pytest.fail("the source did not answer")
    finally:
        source.close()
