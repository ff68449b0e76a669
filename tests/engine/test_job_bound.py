"""The job bound (engine.config.JOB_BOUND_SECONDS): the heaviest predictions, a 30 s one with MultiBand Diffusion and
a 40 s melody (windowed extension, a chroma per window), run beside a live session without any job on the LM or
codec thread lasting longer, and give every decoder row and slot back."""

import threading

import pytest

from engine.config import JOB_BOUND_SECONDS, EngineConfig
from engine.work.batch import BatchRequest
from engine.work.session import SessionSettings
from tests.support.families import melody_file
from tests.support.helpers import wait_until


@pytest.mark.slow
def test_no_job_outlasts_the_bound_with_mbd_and_a_long_melody_beside_a_session(demo_family, tmp_path):
    from engine.core import Engine

    engine = Engine.load(demo_family("melody"), device="cpu", config=EngineConfig(max_sessions=2))
    try:
        session = engine.open_session(SessionSettings(styles=("dub",), weights=(1.0,), chunk_seconds=2.0), seed=1)
        indices: list[int] = []
        stop = threading.Event()

        def listen() -> None:
            while not stop.is_set():
                indices.append(session.next_chunk().result(timeout=120).index)

        listener = threading.Thread(target=listen)
        listener.start()
        engine.lm_worker.reset_longest()
        engine.codec_worker.reset_longest()
        try:
            mbd = engine.generate(BatchRequest(prompt="techno", duration=30, seed=1, multi_band_diffusion=True))
            melody = engine.generate(BatchRequest(prompt="organ", duration=40, seed=2,
                                                  input_audio=melody_file(tmp_path / "m.wav", seconds=12.0)))
            shapes = [mbd.wait().wav.shape, melody.wait().wav.shape]
        finally:
            stop.set()
            listener.join()
            session.close()
        lm, codec = engine.lm_worker.longest_job, engine.codec_worker.longest_job
        assert lm[0] <= JOB_BOUND_SECONDS and codec[0] <= JOB_BOUND_SECONDS, (lm, codec)
        assert shapes == [(1, 30 * 32000), (1, 40 * 32000)]
        assert indices == list(range(len(indices))) and len(indices) >= 3
        assert wait_until(lambda: engine.rows_in_use == 0 and engine.sessions_open == 0, timeout=10)
        assert engine.health().ok
    finally:
        engine.close()
