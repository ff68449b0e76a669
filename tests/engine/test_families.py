"""Melody and stereo checkpoints through the engine's public API: predictions on the fast path, jam sessions."""

from dataclasses import replace

import pytest
import torch

from engine.config import EngineConfig
from engine.runtime.streams import SamplingParams
from engine.work.batch import BatchRequest, RequestError
from engine.work.session import SessionSettings
from tests.support.families import audiocraft_tokens, melody_file
from tests.support.helpers import sine_wav
from tests.support.servers import start_server

SETTINGS = SessionSettings(styles=("dub",), weights=(1.0,), chunk_seconds=0.4)


@pytest.fixture(scope="module")
def family_engine(demo_family):
    """kind -> Engine on that demo family (float32, so the fast path can be compared with audiocraft's)."""
    from engine.core import Engine

    engines = {}

    def get(kind: str) -> Engine:
        if kind not in engines:
            engines[kind] = Engine.load(demo_family(kind), device="cpu",
                                        config=EngineConfig(max_sessions=2, weight_format="float32"))
        return engines[kind]

    yield get
    for engine in engines.values():
        engine.close()


def test_a_melody_prediction_follows_the_whole_slice_as_audiocraft_does(family_engine, tmp_path):
    """audiocraft's chroma conditioner analyses the whole melody (its first 30 s), however short the output: a 2 s
    output of a 6 s melody follows the chroma of all 6 s, not of its first 2 s looped. audiocraft is given the
    whole file here, so a path that cut the melody to the duration would differ."""
    engine = family_engine("melody")
    path = melody_file(tmp_path / "m.wav", freqs=(440.0, 660.0, 550.0), seconds=6.0)  # a new note every 2 s
    request = BatchRequest(prompt="piano", input_audio=path, duration=2, seed=1, temperature=0.0)
    ours = engine.generate(request).wait().tokens
    assert torch.equal(ours, audiocraft_tokens(engine, "piano", 2, melody=path))
    assert torch.equal(ours, engine.generate(request, reference=True).wait().tokens)


@pytest.mark.slow
def test_a_40_s_melody_runs_on_the_step_decoder_as_audiocraft_s_windowed_extension(family_engine, tmp_path):
    """Past 30 s a melody prediction is a finite stream in windows (18 s stride, the last 12 s kept as prompt,
    each window's chroma the melody looped from its offset): greedy tokens equal audiocraft's generate_with_chroma,
    and no job on the LM thread ran the whole generation."""
    engine = family_engine("melody")
    path = melody_file(tmp_path / "m.wav", freqs=(440.0, 660.0, 550.0, 330.0), seconds=11.0)
    engine.lm_worker.reset_longest()
    ours = engine.generate(BatchRequest(prompt="organ", input_audio=path, duration=40, seed=2,
                                        temperature=0.0)).wait().tokens
    assert engine.lm_worker.reset_longest()[1] == "Scheduler.run_once"  # steps, never one generate call
    assert ours.shape[-1] == 40 * 50
    assert torch.equal(ours, audiocraft_tokens(engine, "organ", 40, melody=path))


def test_melody_steers_and_text_alone_works_on_a_melody_model(family_engine, tmp_path):
    engine = family_engine("melody")

    def tokens(**inputs):
        return engine.generate(BatchRequest(prompt="piano", duration=2, seed=3, **inputs)).wait().tokens

    first = tokens(input_audio=melody_file(tmp_path / "a.wav"))
    assert torch.equal(first, tokens(input_audio=melody_file(tmp_path / "a.wav")))
    assert not torch.equal(first, tokens(input_audio=melody_file(tmp_path / "b.wav", freqs=(220.0, 330.0))))
    assert not torch.equal(first, tokens())  # text alone: the null prefix


def _prefix_cache(engine, session) -> torch.Tensor:
    """The self-attention keys of the prefix positions of a session's first style row (read on the LM thread)."""
    def read() -> torch.Tensor:
        row = session.stream.rows.start
        decoder = engine.scheduler.decoder
        return decoder.keys[:, row, :, : decoder.host_prefix_lengths[row]].clone()

    return engine.lm_worker.call(read).result(timeout=10)


def test_a_jam_session_follows_a_melody_and_goes_on_without_one(family_engine, tmp_path):
    """`set_melody` swaps the chroma prefix from the chunk it names (greedy decoding, so sessions are comparable):
    named before the first chunk, the session plays what a session opened with that melody plays; named mid-stream,
    the chunks before it are those of a text-only session, the chunk it names is not, and the rows then hold the
    prefix of a session opened with the melody; letting go brings back a text-only session's null prefix."""
    import soundfile as sf

    engine = family_engine("melody")
    wav, rate = sf.read(melody_file(tmp_path / "m.wav"), dtype="float32", always_2d=True)
    melody = (torch.from_numpy(wav.T), rate)
    greedy = replace(SETTINGS, params=SamplingParams(temperature=0.0))

    def play(count: int, melody_at_open=None, changes=()):
        """Frames of `count` chunks and the style row's prefix keys after each, with set_melody(value) called
        before chunk `index` for each (index, value) of `changes`."""
        session = engine.open_session(greedy, seed=4, melody=melody_at_open)
        frames, prefixes, due = [], [], dict(changes)
        try:
            for index in range(count):
                if index in due:
                    assert session.set_melody(due[index]).chunk == index
                frames.append(session.next_chunk().result(timeout=60).frames)
                prefixes.append(_prefix_cache(engine, session))
        finally:
            session.close()
        return frames, prefixes

    followed, melody_prefix = play(2, melody_at_open=melody)
    text_only, null_prefix = play(3)
    assert not torch.equal(melody_prefix[0], null_prefix[0])
    late, _ = play(2, changes=[(0, melody)])
    assert all(torch.equal(a, b) for a, b in zip(late, followed, strict=True))
    switching, prefixes = play(4, changes=[(2, melody), (3, None)])
    assert torch.equal(switching[0], text_only[0]) and torch.equal(switching[1], text_only[1])
    assert not torch.equal(switching[2], text_only[2])
    assert torch.equal(prefixes[2], melody_prefix[0]) and torch.equal(prefixes[3], null_prefix[0])


def test_stereo_predictions_and_sessions_carry_two_distinct_channels(family_engine):
    engine = family_engine("stereo")
    result = engine.generate(BatchRequest(prompt="wide", duration=2, seed=1)).wait()
    assert result.wav.shape == (2, 64000) and result.tokens.shape[0] == 8
    assert not torch.allclose(result.wav[0], result.wav[1])
    session = engine.open_session(SETTINGS, seed=2)
    try:
        chunk = session.next_chunk().result(timeout=60)
    finally:
        session.close()
    assert chunk.audio.shape[0] == 2 and not torch.allclose(chunk.audio[0], chunk.audio[1])


def test_mbd_on_stereo_and_melody_on_a_text_model_say_what_to_change(family_engine, engine, tmp_path):
    with pytest.raises(RequestError, match="MultiBand Diffusion is trained on mono"):
        family_engine("stereo").generate(BatchRequest(prompt="x", duration=1, multi_band_diffusion=True))
    clip = sine_wav(tmp_path / "clip.wav", seconds=1.0)
    with pytest.raises(RequestError, match="cannot follow a melody"):
        engine.generate(BatchRequest(prompt="x", input_audio=clip, duration=1))
    with pytest.raises(ValueError, match="cannot follow a melody"):
        engine.open_session(SETTINGS, seed=1, melody=(torch.zeros(1, 32000), 32000))
    assert engine.sessions_open == 0


def test_jam_clients_send_a_melody_and_hear_stereo(family_engine, tmp_path):
    import base64
    import io
    import json

    import soundfile as sf
    from websockets.sync.client import connect

    from tests.support.jam_client import START, is_status, messages_until, next_of

    for kind in ("stereo-melody",):
        server = start_server(family_engine(kind))
        try:
            with connect(f"ws://127.0.0.1:{server.port}/ws/jam", max_size=None) as ws:
                ws.send(json.dumps(START))
                first = next_of(ws, "chunk")
                audio = base64.b64encode(melody_file(tmp_path / "m.wav").read_bytes()).decode()
                ws.send(json.dumps({"type": "melody", "audio_base64": audio}))
                status = next_of(ws, "status")
                assert status["status"] == "melody" and status["following"] is True
                assert status["applies_from_chunk"] >= 1
                ws.send(json.dumps({"type": "melody", "audio_base64": base64.b64encode(b"noise").decode()}))
                refused = messages_until(ws, is_status("refused"))[-1]  # the session plays on: not an `error`
                assert refused["error"].startswith("melody: ")
                chunk = next_of(ws, "chunk")
                samples, _ = sf.read(io.BytesIO(base64.b64decode(chunk["audio_base64"])), always_2d=True)
                assert samples.shape[1] == 2 == chunk["metadata"]["channels"] == first["metadata"]["channels"]
        finally:
            server.stop()
