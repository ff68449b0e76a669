"""engine.runtime.context: the work types get a Runtime, never the Engine, so what they may touch is written once."""

import dataclasses

import pytest

from engine.runtime.context import Runtime
from engine.work.settings import SessionSettings


def test_the_runtime_holds_the_model_the_config_the_scheduler_and_the_two_workers_only():
    assert [field.name for field in dataclasses.fields(Runtime)] == [
        "model", "config", "scheduler", "lm_worker", "codec_worker"]
    assert not {"generate", "open_session", "render", "describe", "health", "predictions"} & set(dir(Runtime))


def test_a_session_sees_the_runtime_not_the_engine(engine):
    assert isinstance(engine.runtime, Runtime) and engine.runtime.model is engine.model
    session = engine.open_session(SessionSettings(styles=("dub",), weights=(1.0,), chunk_seconds=0.4), seed=1)
    try:
        assert session.runtime is engine.runtime
        assert session.next_chunk().result(timeout=60).index == 0
    finally:
        session.close()
    with pytest.raises(dataclasses.FrozenInstanceError):  # nothing is added to what the work types may touch
        engine.runtime.extra = 1
