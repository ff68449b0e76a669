"""Jam sessions on the engine: chunk lengths, seamless overlap, flat cost, live updates, concurrency."""

import threading
import typing as tp
from concurrent.futures import Future
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.runtime.scheduler import Scheduler
from engine.runtime.streams import SamplingParams, Stream
from engine.work.batch import BatchRequest
from engine.work.session import SessionSettings
from tests.support.helpers import offline_decode, sine_wav, snr_db, wait_until
from tests.support.sessions import SETTINGS, collect, session_chunks, stitch


def with_params(settings: SessionSettings, **changes) -> SessionSettings:
    """A copy of `settings` with sampling parameters or other fields changed (validated by SessionSettings)."""
    params = {k: changes.pop(k) for k in ("temperature", "top_k", "top_p", "guidance") if k in changes}
    return replace(settings, params=replace(settings.params, **params), **changes)


def test_chunks_have_the_requested_length(engine):
    chunks = session_chunks(engine, 3, seed=1)
    for i, chunk in enumerate(chunks):
        assert chunk.index == i
        assert chunk.sample_rate == 32000
        assert chunk.audio.shape[-1] == int(1.025 * 32000)
        assert chunk.seconds == 1.0 and chunk.overlap_seconds == pytest.approx(0.025)


def test_stream_equals_offline_decode_of_its_tokens(engine):
    """Seamlessness: concatenated chunks vs one decode of all tokens, and each chunk's overlap tail is the
    audio that really follows it (what the seed's client crossfades into the next chunk)."""
    chunks = session_chunks(engine, 6, seed=2)
    streamed = stitch(chunks)
    tokens = torch.cat([c.frames for c in chunks], dim=-1)
    offline = offline_decode(engine, tokens)
    assert snr_db(offline[:, : streamed.shape[-1]], streamed) >= 30
    # SNR over 6 s hides clicks (decoding each chunk without context still scores 46 dB); the worst sample does not
    assert (streamed - offline[:, : streamed.shape[-1]]).abs().max() <= 1e-3 * offline.abs().max()
    overlap = int(0.025 * 32000)
    for i, chunk in enumerate(chunks[:-1]):
        end = 32000 * (i + 1)
        assert snr_db(offline[:, end: end + overlap], chunk.audio[:, -overlap:]) >= 30
    # no click at the boundaries: the streamed sample-to-sample step there is the offline decode's step
    boundaries = [32000 * (i + 1) for i in range(len(chunks) - 1)]
    streamed_steps = np.array([abs(float(streamed[0, b] - streamed[0, b - 1])) for b in boundaries])
    offline_steps = np.array([abs(float(offline[0, b] - offline[0, b - 1])) for b in boundaries])
    scale = float(offline[0].abs().max())
    assert np.abs(streamed_steps - offline_steps).max() <= 0.05 * scale


def test_same_seed_same_music(engine):
    tokens = [torch.cat([c.frames for c in session_chunks(engine, 2, seed=3)], dim=-1) for _ in range(2)]
    assert torch.equal(tokens[0], tokens[1])


def test_update_applies_from_the_next_step_of_the_chunk_in_the_making(engine):
    """An update between chunks starts in the next chunk, just past the frames already made for the codec's
    lookahead; one sent while a chunk is in the making starts inside that chunk, which lists it in `changes`."""
    session = engine.open_session(SETTINGS, seed=4)
    metal = with_params(SETTINGS, styles=("metal",), weights=(1.0,), temperature=0.7, top_k=5)
    try:
        first = session.next_chunk().result(timeout=60)
        between = session.update(metal).result(timeout=60)
        second = session.next_chunk().result(timeout=60)
        in_flight = session.next_chunk()
        inside = session.update(with_params(metal, styles=("metal", "ambient", "funk"), weights=(1, 1, 1)))
        inside = inside.result(timeout=60)
        third = in_flight.result(timeout=60)
        fourth = session.next_chunk().result(timeout=60)
    finally:
        session.close()
    assert between.chunk == 1 and between.offset_seconds < 0.1
    assert first.settings.styles == ("jazz", "hiphop") and not first.changes
    assert second.settings.styles == ("jazz", "hiphop")  # its first samples were made before the update
    assert [(round(o, 4), c.styles) for o, c in second.changes] == [(round(between.offset_seconds, 4), ("metal",))]
    assert second.changes[0][1].params.top_k == 5
    assert inside.chunk in (2, 3)  # in the chunk in the making unless that one was already complete
    chunks = {2: third, 3: fourth}
    assert chunks[inside.chunk].changes[-1][1].styles == ("metal", "ambient", "funk")
    assert fourth.settings.styles == ("metal", "ambient", "funk") or fourth.changes
    assert inside.stream_seconds == pytest.approx(chunks[inside.chunk].start_seconds + inside.offset_seconds)


def _context_cache(engine, session) -> torch.Tensor:
    """The self-attention keys of a session's first style row and its unconditional row, over the steps fed so far
    (read on the LM thread, between chunks)."""
    def read() -> torch.Tensor:
        rows, fed = session.stream.rows, session.stream.frames.step - 1  # the step to predict is not fed yet
        return engine.scheduler.decoder.keys[:, [rows.start, rows.stop - 1], :, :fed].clone()

    return engine.lm_worker.call(read).result(timeout=10)


def test_update_keeps_the_context(engine):
    """A style change keeps what the session's rows attend to: the keys of every step before the switch are still
    there after it (a reset or restarted context overwrites them), so two sessions that differ only in what they
    played before switching to the same style go on differently (greedy decoding), and the switch changes what
    follows (an ignored update would go on as if none came)."""
    greedy = with_params(SETTINGS, temperature=0.0)
    metal = with_params(greedy, styles=("metal",), weights=(1.0,))

    def after_switch(before: SessionSettings, switch: tp.Optional[SessionSettings]) -> torch.Tensor:
        session = engine.open_session(before, seed=7)
        try:
            session.next_chunk().result(timeout=60)
            context = _context_cache(engine, session)
            if switch is not None:
                session.update(switch).result(timeout=60)
            frames = session.next_chunk().result(timeout=60).frames
            assert torch.equal(_context_cache(engine, session)[..., : context.shape[-2], :], context)
            return frames
        finally:
            session.close()

    from_jazz = after_switch(greedy, metal)
    assert not torch.equal(from_jazz, after_switch(with_params(greedy, styles=("ambient", "funk")), metal))
    assert not torch.equal(from_jazz, after_switch(greedy, None))


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="styles"):
        SessionSettings(styles=(), weights=())
    with pytest.raises(ValueError, match="2 style weights for 1 styles"):
        SessionSettings(styles=("a",), weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="not all be zero"):
        SessionSettings(styles=("a", "b"), weights=(0.0, 0.0))
    with pytest.raises(ValueError, match="temperature"):
        with_params(SETTINGS, temperature=-1)
    with pytest.raises(ValueError, match="at most 4"):
        SessionSettings(styles=tuple("abcde"), weights=(1.0,) * 5)


def test_session_continues_an_audio_prompt_as_a_continuation_prediction_does(engine, tmp_path):
    """The prompt is the session's context, not its output: its first chunk holds exactly the frames a greedy
    continuation prediction of the same audio, style and guidance generates after the prompt."""
    import soundfile as sf

    path = sine_wav(tmp_path / "loop.wav", seconds=2.0)
    wav, rate = sf.read(path, dtype="float32", always_2d=True)
    settings = SessionSettings(styles=("jazz",), weights=(1.0,), params=SamplingParams(temperature=0.0, guidance=3.0),
                           chunk_seconds=1.0)
    (chunk,) = session_chunks(engine, 1, seed=5, settings=settings, prompt=(torch.from_numpy(wav.T), rate))
    prediction = engine.generate(BatchRequest(prompt="jazz", input_audio=path, continuation=True, duration=2, seed=5,
                                              temperature=0.0, classifier_free_guidance=3.0)).wait()
    prompt_frames = 100  # 2 s at 50 Hz
    assert chunk.audio.shape[-1] == int(1.025 * 32000)
    assert torch.equal(chunk.frames, prediction.tokens[:, prompt_frames: prompt_frames + chunk.frames.shape[-1]])


def continue_tokens(engine, settings: SessionSettings, prompt: torch.Tensor, frames: int) -> torch.Tensor:
    """The first `frames` frames a stream started from the token prompt [K, P] generates (a finite stream on the
    engine, for a reference: the public API takes prompts as audio, whose re-encoding is not exact)."""
    done: Future = Future()
    pieces: list[torch.Tensor] = []
    max_delay = max(engine.model.musicgen.lm.pattern_provider.delays)
    # a finite stream pads past its end: the frames wanted are generated well before it
    stream = engine.runtime.new_stream(settings.conditioning, settings.params, seed=0, prompt=prompt,
                               target_frames=prompt.shape[-1] + frames + max_delay + 1)

    def on_frames(s) -> None:
        pieces.append(s.take_frames())
        if s.done():
            engine.scheduler.remove_stream(s)
            done.set_result(torch.cat(pieces, dim=-1))

    stream.on_frames = on_frames
    stream.on_failed = lambda s, error: done.set_exception(error)
    engine.lm_worker.call(lambda: engine.scheduler.add_stream(stream)).result(timeout=10)
    return done.result(timeout=120)[:, prompt.shape[-1]: prompt.shape[-1] + frames]


def test_context_rolls_over_past_the_window(engine, monkeypatch):
    """When the context fills the 30 s window, the stream keeps its last 12 s of tokens, re-prefills them (in
    slices between other streams' steps) and goes on exactly as a stream started from those tokens does."""
    rolls: list[tuple[int, torch.Tensor]] = []
    roll_window = Stream.roll_window

    def recording(stream: Stream) -> None:
        at = stream.absolute_complete
        roll_window(stream)
        rolls.append((at, stream.frames.codes[0, :, : stream.frames.step - 1].clone()))  # the prompt kept

    monkeypatch.setattr(Stream, "roll_window", recording)
    settings = SessionSettings(styles=("drone",), weights=(1.0,), params=SamplingParams(temperature=0.0),
                           chunk_seconds=5.0)
    session = engine.open_session(settings, seed=6)
    try:
        chunks = collect(session, 8)  # 40 s: one roll-over, at 30 s
    finally:
        session.close()
    assert all(c.audio.shape[-1] == int(5.025 * 32000) for c in chunks)
    tokens = torch.cat([c.frames for c in chunks], dim=-1)
    keep = engine.runtime.keep_frames
    ((at, kept),) = rolls
    assert at == engine.runtime.window_frames and torch.equal(kept, tokens[:, at - keep: at])
    after = tokens[:, at:]
    assert after.shape[-1] >= 400
    assert torch.equal(after, continue_tokens(engine, settings, kept, after.shape[-1]))


def test_a_prediction_stepped_beside_two_sessions_gives_the_bytes_it_gives_alone(engine, monkeypatch):
    """A prediction is a finite stream whose forward is never shared with sessions (see scheduler._runs):
    stepped in the same scheduler steps as two live sessions, it gives the bytes it gives alone, and the sessions
    get every chunk."""
    shared_steps = []  # per scheduler step the prediction stepped in: how many sessions stepped in it too
    stepped: list = []
    run_once, step = Scheduler.run_once, Scheduler._step

    def iteration(self):  # one step of the scheduler: the live streams', then the prediction's
        stepped.clear()
        run_once(self)
        if any(s.target_frames is not None for s in stepped):
            shared_steps.append(sum(s.target_frames is None for s in stepped))

    def recording(self, active):
        stepped.extend(active)
        return step(self, active)

    monkeypatch.setattr(Scheduler, "run_once", iteration)
    monkeypatch.setattr(Scheduler, "_step", recording)
    results = {}
    playing = threading.Barrier(3, timeout=60)  # the prediction starts once both sessions play

    def jam(name, seed):
        session = engine.open_session(SETTINGS, seed=seed)
        try:
            chunks = [session.next_chunk().result(timeout=120)]
            playing.wait()
            results[name] = chunks + collect(session, 5)
        finally:
            session.close()

    threads = [threading.Thread(target=jam, args=(f"jam{i}", 10 + i)) for i in range(2)]
    for thread in threads:
        thread.start()
    playing.wait()
    prediction = engine.generate(BatchRequest(prompt="house", duration=3, seed=1)).wait()
    for thread in threads:
        thread.join(120)
    assert prediction.wav.shape[-1] == 3 * 32000
    assert shared_steps.count(2) >= 20, "the prediction never stepped beside both sessions"
    shared_steps.clear()
    alone = engine.generate(BatchRequest(prompt="house", duration=3, seed=1)).wait()
    assert set(shared_steps) == {0}
    assert torch.equal(prediction.wav, alone.wav)
    for name in ("jam0", "jam1"):
        assert [c.index for c in results[name]] == [0, 1, 2, 3, 4, 5]
    assert engine.sessions_open == 0


def test_admitting_a_prediction_raises_the_wait_a_session_expects_until_it_ends(engine):
    """What a chunk may wait behind batch work is known as the work is admitted, before any of it runs (a
    consumer adds it to its lead), and goes back to nothing when the work ends."""
    session = engine.open_session(SETTINGS, seed=3)
    try:
        assert session.expected_wait() == 0.0
        job = engine.generate(BatchRequest(prompt="x", duration=4, seed=1, multi_band_diffusion=True))
        assert session.expected_wait() > 0.0
        job.wait()
        assert wait_until(lambda: session.expected_wait() == 0.0, timeout=10)
    finally:
        session.close()
